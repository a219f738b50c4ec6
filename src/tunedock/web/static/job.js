// Follows a deploy or un-deploy job: polls its state, lists new progress events, and opens
// the deployment history when the job succeeds.
"use strict";

(function () {
  const POLL_MILLISECONDS = 700;

  function eventItem(event) {
    const item = document.createElement("li");
    item.dataset.sequence = event.sequence;
    const stage = document.createElement("span");
    stage.className = "event-stage";
    stage.textContent = event.stage.replace(/_/g, " ");
    const message = document.createElement("span");
    message.className = "event-message";
    message.textContent = event.message;
    const time = document.createElement("time");
    time.setAttribute("datetime", event.created_at);
    time.setAttribute("data-local-time", "");
    time.title = new Date(event.created_at).toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
    item.append(stage, " ", message, " ", time);
    return item;
  }

  function showStatus(card, job) {
    card.dataset.jobStatus = job.status;
    const badge = card.querySelector("[data-job-status-badge]");
    badge.innerHTML = "";
    const span = document.createElement("span");
    span.className = "badge badge-" + job.status;
    span.textContent = job.status.replace(/_/g, " ");
    badge.appendChild(span);
  }

  async function follow(card) {
    const list = card.querySelector("[data-job-events]");
    let seen = Math.max(0, ...Array.from(list.children).map(function (item) { return Number(item.dataset.sequence); }));
    while (true) {
      let job;
      try {
        const response = await fetch("/jobs/" + card.dataset.jobId + "/status", { headers: { Accept: "application/json" } });
        if (response.status === 401) { window.location.assign("/sign-in?next=" + encodeURIComponent(window.location.pathname)); return; }
        job = await response.json();
      } catch (error) {
        await new Promise(function (resolve) { setTimeout(resolve, POLL_MILLISECONDS * 3); });
        continue;
      }
      job.events.filter(function (event) { return event.sequence > seen; }).forEach(function (event) {
        list.appendChild(eventItem(event));
        seen = event.sequence;
      });
      tunedock.localizeTimes(list);
      showStatus(card, job);
      if (job.status !== "in_progress") {
        finish(card, job);
        return;
      }
      await new Promise(function (resolve) { setTimeout(resolve, POLL_MILLISECONDS); });
    }
  }

  function finish(card, job) {
    card.querySelector("[data-job-waiting]").hidden = true;
    const cancel = card.querySelector("[data-job-cancel]");
    if (cancel) { cancel.hidden = true; }
    if (job.status === "success") {
      window.location.assign(job.history_url);
      return;
    }
    const error = card.querySelector("[data-job-error]");
    error.textContent = job.error || "The job failed.";
    error.hidden = false;
  }

  document.addEventListener("DOMContentLoaded", function () {
    const card = document.querySelector("[data-job-id]");
    if (card && card.dataset.jobStatus === "in_progress") {
      follow(card);
    }
  });
})();
