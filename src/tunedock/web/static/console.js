// Tunedock console: behaviour shared by every page. Plain JavaScript, no build step.
"use strict";

window.tunedock = window.tunedock || {};

tunedock.csrfToken = function () {
  const meta = document.querySelector('meta[name="csrf-token"]');
  return meta ? meta.content : "";
};

// Show every <time data-local-time> in the browser's time zone; its title keeps the UTC time.
tunedock.localizeTimes = function (root) {
  const format = new Intl.DateTimeFormat(undefined, {
    year: "numeric", month: "short", day: "numeric",
    hour: "2-digit", minute: "2-digit", second: "2-digit", timeZoneName: "short",
  });
  (root || document).querySelectorAll("time[data-local-time]").forEach(function (element) {
    const moment = new Date(element.getAttribute("datetime"));
    if (!isNaN(moment)) {
      element.textContent = format.format(moment);
    }
  });
};

// Put text on the clipboard; execCommand covers pages served over plain HTTP to another host,
// where navigator.clipboard does not exist.
tunedock.copyText = async function (text) {
  if (navigator.clipboard && window.isSecureContext) {
    await navigator.clipboard.writeText(text);
    return;
  }
  const area = document.createElement("textarea");
  area.value = text;
  area.setAttribute("readonly", "");
  area.style.position = "fixed";
  area.style.opacity = "0";
  document.body.appendChild(area);
  area.select();
  const copied = document.execCommand("copy");
  area.remove();
  if (!copied) {
    throw new Error("the browser refused to copy");
  }
};

function setUpCopyButtons() {
  document.querySelectorAll("[data-copy-target]").forEach(function (button) {
    button.addEventListener("click", async function () {
      const source = document.getElementById(button.dataset.copyTarget);
      const status = button.closest("section, .card, main").querySelector("[data-copy-status]");
      const label = button.dataset.copyLabel || "Text";
      try {
        await tunedock.copyText(source.textContent);
        button.textContent = "Copied";
        if (status) { status.textContent = label + " copied to the clipboard."; }
      } catch (error) {
        if (status) { status.textContent = "Copy failed (" + error.message + "); select the text and copy it by hand."; }
      }
      setTimeout(function () { button.textContent = "Copy"; }, 2000);
    });
  });
}

// Tabs that follow the ARIA tabs pattern: arrow keys, Home and End move between tabs.
function setUpTabs() {
  document.querySelectorAll('[role="tablist"]').forEach(function (list) {
    const tabs = Array.from(list.querySelectorAll('[role="tab"]'));
    function select(tab) {
      tabs.forEach(function (other) {
        const active = other === tab;
        other.setAttribute("aria-selected", active ? "true" : "false");
        other.tabIndex = active ? 0 : -1;
        document.getElementById(other.getAttribute("aria-controls")).hidden = !active;
      });
    }
    tabs.forEach(function (tab, index) {
      tab.addEventListener("click", function () { select(tab); });
      tab.addEventListener("keydown", function (event) {
        const moves = { ArrowRight: index + 1, ArrowLeft: index - 1, Home: 0, End: tabs.length - 1 };
        if (!(event.key in moves)) { return; }
        event.preventDefault();
        const next = tabs[(moves[event.key] + tabs.length) % tabs.length];
        select(next);
        next.focus();
      });
    });
  });
}

// Forms with data-confirm ask in a modal dialog before they submit.
function setUpConfirmations() {
  const dialog = document.getElementById("confirm-dialog");
  document.querySelectorAll("form[data-confirm]").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      if (form.dataset.confirmed === "true" || !dialog || !dialog.showModal) { return; }
      event.preventDefault();
      dialog.querySelector("#confirm-message").textContent = form.dataset.confirm;
      dialog.returnValue = "";
      dialog.addEventListener("close", function onClose() {
        dialog.removeEventListener("close", onClose);
        if (dialog.returnValue === "confirm") {
          form.dataset.confirmed = "true";
          form.requestSubmit();
        }
      });
      dialog.showModal();
      dialog.querySelector("#confirm-accept").focus();
    });
  });
}

// Table rows with data-href open on click; the link inside the row serves the keyboard.
function setUpClickableRows() {
  document.querySelectorAll("tr[data-href]").forEach(function (row) {
    row.addEventListener("click", function (event) {
      if (event.target.closest("a, button, input, select, textarea")) { return; }
      window.location.assign(row.dataset.href);
    });
  });
}

function focusDetails() {
  if (window.location.hash === "#details") {
    const details = document.getElementById("details");
    if (details) { details.focus({ preventScroll: false }); }
  }
}

document.addEventListener("DOMContentLoaded", function () {
  tunedock.localizeTimes();
  setUpCopyButtons();
  setUpTabs();
  setUpConfirmations();
  setUpClickableRows();
  focusDetails();
});
