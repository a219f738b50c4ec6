// Prompt playground: sends one prompt to two to four models through the inference API
// (/v1) with streaming, and keeps the runs of this tab in sessionStorage.
"use strict";

(function () {
  const KEY_STORAGE = "tunedock.playground.key";
  const RUNS_STORAGE = "tunedock.playground.runs";
  const MAX_RUNS = 20;
  // A key is replaced this long before it expires, so that no run starts with a dying key.
  const KEY_MARGIN_MILLISECONDS = 5 * 60 * 1000;

  // Credentials ------------------------------------------------------------------------

  async function issueKey() {
    const response = await fetch("/playground/key", {
      method: "POST",
      headers: { "X-CSRF-Token": tunedock.csrfToken(), Accept: "application/json" },
    });
    if (response.status === 401) {
      window.location.assign("/sign-in?next=/playground");
      throw new Error("your session has ended");
    }
    if (!response.ok) {
      throw new Error("the console did not issue a playground key (HTTP " + response.status + ")");
    }
    const issued = await response.json();
    sessionStorage.setItem(KEY_STORAGE, JSON.stringify({ key: issued.key, expiresAt: issued.expires_at }));
    return issued.key;
  }

  let pendingKey = null;

  async function playgroundKey(renew) {
    const stored = JSON.parse(sessionStorage.getItem(KEY_STORAGE) || "null");
    if (!renew && stored && Date.parse(stored.expiresAt) - Date.now() > KEY_MARGIN_MILLISECONDS) {
      return stored.key;
    }
    // Columns start together; they share one request for a new key.
    if (!pendingKey) {
      pendingKey = issueKey().finally(function () { pendingKey = null; });
    }
    return pendingKey;
  }

  // Requests ---------------------------------------------------------------------------

  function requestBody(settings, slug, stream) {
    const body = { model: slug, temperature: settings.temperature, max_tokens: settings.maxTokens };
    if (settings.mode === "chat") {
      body.messages = [];
      if (settings.system) { body.messages.push({ role: "system", content: settings.system }); }
      body.messages.push({ role: "user", content: settings.prompt });
    } else {
      body.prompt = settings.prompt;
    }
    if (stream) {
      body.stream = true;
      if (stream === "with_usage") { body.stream_options = { include_usage: true }; }
    }
    return body;
  }

  async function post(settings, body, retried) {
    const route = settings.mode === "chat" ? "/v1/chat/completions" : "/v1/completions";
    const key = await playgroundKey(retried);
    const response = await fetch(route, {
      method: "POST",
      headers: { Authorization: "Bearer " + key, "Content-Type": "application/json",
                 Accept: body.stream ? "text/event-stream" : "application/json" },
      body: JSON.stringify(body),
    });
    if (response.status === 401 && !retried) {
      // The key expired or was revoked: issue a new one and try once more.
      await response.body?.cancel();
      return post(settings, body, true);
    }
    return response;
  }

  async function errorOf(response) {
    try {
      const body = await response.json();
      return body.error || { message: "HTTP " + response.status };
    } catch (error) {
      return { message: "HTTP " + response.status + " " + response.statusText };
    }
  }

  // The model servers may not stream yet: they reject `stream` or `stream_options` as an
  // unsupported parameter (HTTP 400, param "stream" or "stream_options").
  function streamingRejected(status, error) {
    if (status !== 400 && status !== 422 && status !== 501) { return null; }
    const param = error.param || "";
    const text = (error.message || "").toLowerCase();
    if (param === "stream_options" || (!param && text.includes("stream_options"))) { return "stream_options"; }
    if (param === "stream" || text.includes("stream")) { return "stream"; }
    return null;
  }

  // Runs one model and reports progress through `view`; returns the result it shows.
  async function runModel(settings, slug, view) {
    const started = performance.now();
    const result = { model: slug, text: "", ttft: null, total: null, usage: null, streamed: false, error: null };
    try {
      let response = await post(settings, requestBody(settings, slug, "with_usage"));
      if (!response.ok) {
        const error = await errorOf(response);
        const rejected = streamingRejected(response.status, error);
        if (rejected === "stream_options") {
          response = await post(settings, requestBody(settings, slug, "plain"));
        } else if (rejected === "stream") {
          response = await post(settings, requestBody(settings, slug, false));
        } else {
          throw new Error(error.message);
        }
        if (!response.ok) { throw new Error((await errorOf(response)).message); }
      }
      const contentType = response.headers.get("Content-Type") || "";
      if (contentType.includes("text/event-stream")) {
        result.streamed = true;
        await readStream(response, settings.mode, result, started, view);
      } else {
        const body = await response.json();
        const choice = (body.choices || [])[0] || {};
        result.text = settings.mode === "chat" ? ((choice.message || {}).content || "") : (choice.text || "");
        result.usage = body.usage || null;
        result.ttft = performance.now() - started;
      }
    } catch (error) {
      result.error = error.message;
    }
    result.total = performance.now() - started;
    view.show(result);
    return result;
  }

  // Reads server-sent events: `data: {chunk}` blocks separated by blank lines, ending with `data: [DONE]`.
  async function readStream(response, mode, result, started, view) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    let chunks = 0;
    while (true) {
      const { value, done } = await reader.read();
      if (done) { break; }
      buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
      let boundary;
      while ((boundary = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, boundary);
        buffer = buffer.slice(boundary + 2);
        const data = block.split("\n").filter(function (line) { return line.startsWith("data:"); })
          .map(function (line) { return line.slice(5).replace(/^ /, ""); }).join("\n");
        if (!data) { continue; }
        if (data === "[DONE]") { finishUsage(result, chunks); return; }
        const chunk = JSON.parse(data);
        if (chunk.error) { throw new Error(chunk.error.message || "the stream ended with an error"); }
        if (chunk.usage) { result.usage = chunk.usage; }
        const piece = chunkText(chunk, mode);
        if (piece) {
          if (result.ttft === null) { result.ttft = performance.now() - started; }
          chunks += 1;
          result.text += piece;
          view.show(result);
        }
      }
    }
    finishUsage(result, chunks);
  }

  // The text of a stream chunk: choices[0].text for completions, choices[0].delta.content for chat.
  function chunkText(chunk, mode) {
    const choice = (chunk.choices || [])[0];
    if (!choice) { return ""; }
    if (mode === "chat") { return (choice.delta || {}).content || ""; }
    return choice.text || "";
  }

  function finishUsage(result, chunks) {
    if (!result.usage) {
      // Without stream_options usage the server sends no counts; each content chunk is about one token.
      result.usage = { prompt_tokens: null, completion_tokens: chunks, estimated: true };
    }
  }

  // Display ----------------------------------------------------------------------------

  function milliseconds(value) {
    if (value === null || value === undefined) { return "—"; }
    return value < 1000 ? Math.round(value) + " ms" : (value / 1000).toFixed(2) + " s";
  }

  function columnView(name, slug, settings) {
    const template = document.getElementById("result-template");
    const column = template.content.firstElementChild.cloneNode(true);
    column.querySelector("[data-result-title]").textContent = name;
    column.querySelector("[data-result-route]").textContent = slug + " · " +
      (settings.mode === "chat" ? "/v1/chat/completions" : "/v1/completions");
    column.dataset.model = slug;
    const answer = column.querySelector("[data-answer]");
    answer.textContent = "Running…";
    function metric(name, text) { column.querySelector('[data-metric="' + name + '"]').textContent = text; }
    return {
      element: column,
      show: function (result) {
        answer.textContent = result.text || (result.error ? "" : "…");
        const error = column.querySelector("[data-result-error]");
        error.hidden = !result.error;
        error.textContent = result.error ? "Failed: " + result.error : "";
        if (result.total === null) { return; }
        column.dataset.done = "true";
        const usage = result.usage || {};
        metric("ttft", result.error ? "—" : milliseconds(result.ttft) + (result.streamed ? "" : " (not streamed)"));
        metric("total", milliseconds(result.total));
        metric("prompt_tokens", usage.prompt_tokens ?? "—");
        metric("completion_tokens", usage.completion_tokens === undefined || usage.completion_tokens === null
          ? "—" : (usage.estimated ? "≈ " : "") + usage.completion_tokens);
        metric("streamed", result.streamed ? "yes" : "no");
      },
    };
  }

  // Form, runs and history ---------------------------------------------------------------

  const form = document.getElementById("playground-form");
  if (!form) { return; }
  const results = document.querySelector("[data-results]");
  const formError = form.querySelector("[data-form-error]");
  const runButton = form.querySelector("[data-run]");

  function readSettings() {
    const models = Array.from(form.querySelectorAll('input[name="models"]:checked')).map(function (box) {
      return { slug: box.value, name: box.dataset.name };
    });
    return {
      models: models,
      mode: form.querySelector('input[name="mode"]:checked').value,
      system: form.elements.system.value,
      prompt: form.elements.prompt.value,
      temperature: Number(form.elements.temperature.value),
      maxTokens: Number(form.elements.max_tokens.value),
    };
  }

  function applySettings(settings) {
    form.querySelectorAll('input[name="models"]').forEach(function (box) {
      box.checked = settings.models.some(function (model) { return model.slug === box.value; });
    });
    form.querySelector('input[name="mode"][value="' + settings.mode + '"]').checked = true;
    form.elements.system.value = settings.system || "";
    form.elements.prompt.value = settings.prompt;
    form.elements.temperature.value = settings.temperature;
    form.elements.max_tokens.value = settings.maxTokens;
    showChatFields();
  }

  function problemWith(settings) {
    if (settings.models.length < 2 || settings.models.length > 4) {
      return "Choose 2 to 4 models; " + settings.models.length + " chosen.";
    }
    if (!settings.prompt.trim()) { return "Enter a prompt."; }
    if (!form.reportValidity()) { return "Correct the marked fields."; }
    return null;
  }

  async function run(settings) {
    const problem = problemWith(settings);
    formError.hidden = !problem;
    formError.textContent = problem || "";
    if (problem) { return; }
    runButton.disabled = true;
    results.innerHTML = "";
    const views = settings.models.map(function (model) {
      const view = columnView(model.name, model.slug, settings);
      results.appendChild(view.element);
      return view;
    });
    const outcomes = await Promise.all(settings.models.map(function (model, index) {
      return runModel(settings, model.slug, views[index]);
    }));
    runButton.disabled = false;
    saveRun(settings, outcomes);
  }

  function loadRuns() {
    try { return JSON.parse(sessionStorage.getItem(RUNS_STORAGE) || "[]"); } catch (error) { return []; }
  }

  function saveRun(settings, outcomes) {
    const runs = loadRuns();
    runs.unshift({ at: new Date().toISOString(), settings: settings, results: outcomes });
    sessionStorage.setItem(RUNS_STORAGE, JSON.stringify(runs.slice(0, MAX_RUNS)));
    showRuns();
  }

  function showRuns() {
    const list = document.querySelector("[data-runs]");
    list.innerHTML = "";
    loadRuns().forEach(function (saved) {
      const item = document.createElement("li");
      const text = document.createElement("span");
      text.className = "run-text";
      const names = saved.settings.models.map(function (model) { return model.name; }).join(" · ");
      const prompt = saved.settings.prompt.length > 80 ? saved.settings.prompt.slice(0, 80) + "…" : saved.settings.prompt;
      text.textContent = new Date(saved.at).toLocaleTimeString() + " — " + saved.settings.mode + ", temperature " +
        saved.settings.temperature + ", " + saved.settings.maxTokens + " tokens — " + names + " — “" + prompt + "”";
      const load = document.createElement("button");
      load.type = "button";
      load.className = "button-small";
      load.textContent = "Load";
      load.addEventListener("click", function () { applySettings(saved.settings); form.elements.prompt.focus(); });
      const again = document.createElement("button");
      again.type = "button";
      again.className = "button-small";
      again.textContent = "Run again";
      again.addEventListener("click", function () { applySettings(saved.settings); run(readSettings()); });
      item.append(text, load, again);
      list.appendChild(item);
    });
  }

  function showChatFields() {
    const chat = form.querySelector('input[name="mode"]:checked').value === "chat";
    form.querySelectorAll("[data-chat-only]").forEach(function (element) { element.hidden = !chat; });
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    run(readSettings());
  });
  form.elements.prompt.addEventListener("keydown", function (event) {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
  form.querySelectorAll('input[name="mode"]').forEach(function (radio) { radio.addEventListener("change", showChatFields); });
  document.querySelector("[data-clear-runs]").addEventListener("click", function () {
    sessionStorage.removeItem(RUNS_STORAGE);
    showRuns();
  });
  showChatFields();
  showRuns();
})();
