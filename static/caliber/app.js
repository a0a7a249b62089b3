// The reviewer's keyboard flow, SLA countdowns and the live connection's state.
// No inline script or style anywhere: the CSP forbids both, so everything lives here.
(function () {
  "use strict";

  var SELECTED_KEY = "caliber.queue.index";
  var selectedId = null;
  var selectedIndex = -1;

  function typing(e) {
    var t = e.target;
    return t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA" || t.tagName === "SELECT" || t.isContentEditable);
  }
  function rows() { return Array.prototype.slice.call(document.querySelectorAll("#queue-rows .row")); }

  function select(row, scroll) {
    rows().forEach(function (r) { if (r !== row) r.classList.remove("selected"); });
    if (!row) { selectedId = null; selectedIndex = -1; return; }
    row.classList.add("selected");
    selectedId = row.id;
    selectedIndex = rows().indexOf(row);
    if (scroll) row.scrollIntoView({ block: "nearest" });
  }

  // Rows are replaced and removed under the reviewer's cursor; keep the cursor where it was:
  // on the same row if it is still there, else on whatever now sits at the same position.
  function restoreSelection() {
    if (selectedId === null && selectedIndex < 0) return;
    var row = selectedId && document.getElementById(selectedId);
    if (row && row.classList.contains("row")) { select(row, false); return; }
    var all = rows();
    if (!all.length) { selectedId = null; return; }
    select(all[Math.min(selectedIndex, all.length - 1)], false);
  }

  function move(delta) {
    var all = rows();
    if (!all.length) return;
    var i = selectedId ? all.findIndex(function (r) { return r.id === selectedId; }) : -1;
    i = i < 0 ? (delta > 0 ? 0 : all.length - 1) : Math.max(0, Math.min(all.length - 1, i + delta));
    select(all[i], true);
  }

  function selectedRow() { return selectedId ? document.getElementById(selectedId) : null; }

  function click(selector) {
    var el = document.querySelector(selector);
    if (el) { el.click(); return true; }
    return false;
  }

  function queueKey(e) {
    if (e.key === "j") { move(1); return true; }
    if (e.key === "k") { move(-1); return true; }
    if (e.key === "Enter" || e.key === "o") {
      var row = selectedRow();
      if (!row) return false;
      try { sessionStorage.setItem(SELECTED_KEY, String(rows().indexOf(row))); } catch (err) { /* private mode */ }
      row.querySelector("a").click();
      return true;
    }
    if (e.key === "m") return click(".facet-mine");
    if (e.key === "/") { var search = document.getElementById("queue-search"); if (search) { search.focus(); search.select(); return true; } return false; }
    if (e.key === "x") {
      var picked = selectedRow();
      var box = picked && picked.querySelector("input.pick");
      if (!box) return false;
      box.checked = !box.checked;
      pickChanged(box);
      return true;
    }
    if (e.key === "c") {
      var sel = selectedRow();
      if (!sel || !window.htmx) return false;
      // "from": the queue gets its row and its note back, not the detail page's panel.
      window.htmx.ajax("POST", "/review/" + sel.dataset.id + "/claim/", { source: sel, swap: "none", values: { from: "queue" } });
      return true;
    }
    return false;
  }

  // --- bulk selection: kept across live swaps (a pushed row replaces its checkbox) --------
  var picked = {};
  function pickChanged(box) {
    if (box.checked) picked[box.value] = true; else delete picked[box.value];
    updateBulk();
  }
  function updateBulk() {
    var boxes = document.querySelectorAll("#queue-rows input.pick");
    var n = 0;
    boxes.forEach(function (b) { b.checked = !!picked[b.value]; if (b.checked) n += 1; });
    var count = document.getElementById("bulk-count");
    if (count) count.textContent = n ? n + " selected" : "none selected";
    var all = document.getElementById("pick-all");
    if (all) all.checked = boxes.length > 0 && n === boxes.length;
  }
  document.addEventListener("change", function (e) {
    var t = e.target;
    if (t.matches && t.matches("#queue-rows input.pick")) pickChanged(t);
    if (t.id === "pick-all") {
      document.querySelectorAll("#queue-rows input.pick").forEach(function (b) {
        if (t.checked) picked[b.value] = true; else delete picked[b.value];
      });
      updateBulk();
    }
  });
  // Rows that left the page are no longer selectable: only what is shown is submitted.
  function prunePicked() {
    var shown = {};
    document.querySelectorAll("#queue-rows input.pick").forEach(function (b) { shown[b.value] = true; });
    Object.keys(picked).forEach(function (k) { if (!shown[k]) delete picked[k]; });
    updateBulk();
  }

  function detailKey(e) {
    var form = document.getElementById("decision-form");
    if (e.key === "u") return click('.crumbs a[data-key="u"]');
    if (e.key === "c") return click('#live-state button[data-key="c"]');
    // An approval in its undo window: take it back as quickly as it was given.
    if (e.key === "z") return click("#settlement button[data-undo]:not([disabled])");
    if (!form || form.offsetParent === null) return false;
    var edit = document.getElementById("edit-panel");
    if (e.key === "a") {
      // Irreversible: the server answered with a confirm step. A key never confirms it;
      // the cursor goes to the button, which takes a deliberate Enter or click.
      var confirmButton = document.querySelector("[data-confirm-approve]");
      if (confirmButton) { confirmButton.focus(); return true; }
      if (edit && edit.open) return click("[data-edit-approve]");
      return click('.decision-form button[data-key="a"]');
    }
    if (e.key === "e") {
      if (!edit) return false;
      edit.open = true;
      var first = edit.querySelector("[data-focus]") || edit.querySelector("input, textarea");
      if (first) {
        first.focus();
        if (first.setSelectionRange && first.value !== undefined) first.setSelectionRange(0, 0);
      }
      return true;
    }
    if (e.key === "r" || e.key === "s") {
      var reason = document.getElementById("id_reason");
      // The reason reaches the agent: never submit an empty one, ask for it instead.
      if (reason && !reason.value.trim()) { reason.focus(); return true; }
      return click('.decision-form button[data-key="' + e.key + '"]');
    }
    return false;
  }

  // --- shortcuts can be turned off (stored in this browser) --------------------------------
  var SHORTCUTS_KEY = "caliber.shortcuts";
  function shortcutsOn() {
    try { return localStorage.getItem(SHORTCUTS_KEY) !== "off"; } catch (err) { return true; }
  }
  function showShortcutsState() {
    var on = shortcutsOn();
    document.body.classList.toggle("shortcuts-off", !on);
    document.querySelectorAll(".keys").forEach(function (hint) {
      var button = hint.querySelector(".keys-toggle");
      if (!button) {
        button = document.createElement("button");
        button.type = "button";
        button.className = "keys-toggle";
        hint.appendChild(button);
      }
      button.textContent = on ? "Turn shortcuts off" : "Shortcuts are off: turn on";
      button.setAttribute("aria-pressed", on ? "false" : "true");
    });
  }
  document.addEventListener("click", function (e) {
    var button = e.target instanceof Element ? e.target.closest(".keys-toggle") : null;
    if (!button) return;
    var on = shortcutsOn();
    try { localStorage.setItem(SHORTCUTS_KEY, on ? "off" : "on"); } catch (err) { /* private mode */ }
    showShortcutsState();
    announce(on ? "Keyboard shortcuts off" : "Keyboard shortcuts on");
  });

  document.addEventListener("keydown", function (e) {
    if (e.key === "Escape" && typing(e)) { e.target.blur(); return; }
    if (!shortcutsOn()) return;
    if (e.defaultPrevented || e.ctrlKey || e.metaKey || e.altKey || typing(e)) return;
    var handled = document.getElementById("queue-rows") ? queueKey(e) : detailKey(e);
    if (handled) e.preventDefault();
  });

  // A double click must not submit twice; the server would refuse the second anyway.
  document.addEventListener("submit", function (e) {
    var form = e.target;
    if (form.id === "bulk-form") {
      var button = e.submitter;
      var reason = document.getElementById("bulk-reason");
      if (!document.querySelector("#queue-rows input.pick:checked")) { e.preventDefault(); return; }
      if (button && button.value === "reject" && reason && !reason.value.trim()) { e.preventDefault(); reason.focus(); return; }
    }
    if (form.getAttribute("role") === "search") return;  // htmx handles it; searching twice is harmless
    if (form.dataset.submitted) { e.preventDefault(); return; }
    form.dataset.submitted = "1";
  });

  // --- SLA countdowns ----------------------------------------------------------------------
  var SOON_MS = 15 * 60 * 1000;
  function span(ms) {
    var s = Math.floor(Math.abs(ms) / 1000);
    var d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
    if (d) return d + "d " + h + "h";
    if (h) return h + "h " + m + "m";
    if (m >= 10) return m + "m";
    return m + "m " + (s % 60) + "s";
  }
  function tick() {
    var now = Date.now();
    document.querySelectorAll(".sla[data-due]").forEach(function (el) {
      var due = Date.parse(el.dataset.due);
      if (isNaN(due)) return;
      var left = due - now;
      el.textContent = left >= 0 ? "due in " + span(left) : "overdue " + span(left);
      el.classList.toggle("overdue", left < 0);
      el.classList.toggle("soon", left >= 0 && left < SOON_MS);
    });
  }
  setInterval(tick, 1000);

  // --- screen-reader announcements of live changes -----------------------------------------
  // Real text in a polite live region (#live-announcer, in the base layout): a CSS ::before
  // is not reliably read out, and a region that only changes class is not read at all.
  function announce(text) {
    var region = document.getElementById("live-announcer");
    if (!region || !text) return;
    // Cleared first, so the same words twice in a row are announced twice.
    region.textContent = "";
    setTimeout(function () { region.textContent = text; }, 50);
  }
  function connState(text) {
    document.querySelectorAll(".conn-state").forEach(function (el) {
      if (el.textContent !== text) el.textContent = text;
    });
  }
  var lastLiveState = null;
  function announceChanges() {
    var fresh = Array.prototype.slice.call(document.querySelectorAll("#queue-rows .row.arrived:not([data-announced])"));
    fresh.forEach(function (row) { row.setAttribute("data-announced", "1"); });
    if (fresh.length === 1) {
      var title = fresh[0].querySelector(".title");
      announce("New escalation: " + (title ? title.textContent.trim() : "one more in the queue"));
    } else if (fresh.length > 1) {
      announce(fresh.length + " new escalations in the queue");
    }
    var state = document.getElementById("live-state");
    if (state) {
      var text = state.textContent.replace(/\s+/g, " ").trim();
      if (lastLiveState !== null && text !== lastLiveState) announce(text);
      lastLiveState = text;
    }
  }

  // --- a decision settling after the page showed it ----------------------------------------
  // The push that says "decided" comes when the decision commits; what became of the action
  // (handed to a named person, revised, sent) is settled by the engine a moment later, and
  // nothing pushes that. While the panel says it is still in between, read the page again
  // (a few times, then stop) and put its decided parts in place.
  var SETTLE_IDS = ["live-state", "due-or-outcome", "esc-status"];
  var settleTries = 0;
  var settleTimer = null;
  function unsettled() {
    var s = document.getElementById("settlement");
    if (!s) return false;
    return s.classList.contains("settlement-revising") ||
      (s.classList.contains("settlement-queued") && !s.querySelector(".countdown"));
  }
  function watchSettlement() {
    if (settleTimer || settleTries >= 20 || !unsettled()) return;
    settleTimer = setTimeout(function () {
      settleTimer = null;
      settleTries += 1;
      fetch(location.pathname, { credentials: "same-origin" })
        .then(function (r) { return r.ok ? r.text() : ""; })
        .then(function (html) {
          var doc = new DOMParser().parseFromString(html, "text/html");
          SETTLE_IDS.forEach(function (id) {
            var fresh = doc.getElementById(id), old = document.getElementById(id);
            if (fresh && old) {
              old.replaceWith(fresh);
              if (window.htmx) window.htmx.process(fresh);
            }
          });
          tick();
          announceChanges();
          watchSettlement();
        })
        .catch(function () { watchSettlement(); });
    }, 1500);
  }

  // An htmx request whose session has gone follows the redirect to the login form: send the
  // whole page there instead of swapping the login form into the queue.
  document.addEventListener("htmx:beforeSwap", function (e) {
    var xhr = e.detail && e.detail.xhr;
    if (!xhr || !xhr.responseURL) return;
    var url = new URL(xhr.responseURL);
    if (url.origin === location.origin && url.pathname === "/login/") {
      e.detail.shouldSwap = false;
      connState("session ended: logging in again…");
      window.location.assign("/login/?next=" + encodeURIComponent(location.pathname + location.search));
    }
  });

  // --- the live connection -----------------------------------------------------------------
  document.addEventListener("htmx:wsOpen", function () {
    document.body.classList.remove("ws-down");
    connState("live");
  });
  document.addEventListener("htmx:wsClose", function (e) {
    document.body.classList.add("ws-down");
    var code = e.detail && e.detail.event ? e.detail.event.code : 0;
    if (code === 4401) {
      connState("session ended: logging in again…");
      window.location.assign("/login/?next=" + encodeURIComponent(location.pathname + location.search));
      return;
    }
    if (code === 4400 || code === 4403 || code === 4404) {
      connState(code === 4400 ? "not live: these filters are not valid" : "not live");
      return;
    }
    connState("reconnecting…");
    // The extension retries only abnormal closes; a server that shuts down cleanly (a deploy,
    // a restart) closes with 1000/1001, and the page must come back by itself then too.
    var elt = e.target;
    var wrapper = e.detail && e.detail.socketWrapper;
    if ([1000, 1001, 1005].indexOf(code) >= 0 && wrapper && elt && document.body.contains(elt)) {
      setTimeout(function () { if (document.body.contains(elt)) wrapper.reconnect(); }, 500 + Math.random() * 1500);
    }
  });
  // A push can replace the key hints (#key-hints, out of band): put their switch back.
  document.addEventListener("htmx:wsAfterMessage", function () { restoreSelection(); prunePicked(); tick(); showShortcutsState(); announceChanges(); watchSettlement(); });
  document.addEventListener("htmx:afterSettle", function () { restoreSelection(); prunePicked(); tick(); showShortcutsState(); });

  document.addEventListener("DOMContentLoaded", function () {
    tick();
    showShortcutsState();
    document.querySelectorAll(".conn-state").forEach(function (el) { if (!el.textContent) el.textContent = "connecting…"; });
    var state = document.getElementById("live-state");
    if (state) lastLiveState = state.textContent.replace(/\s+/g, " ").trim();
    watchSettlement();
    if (!document.getElementById("queue-rows")) return;
    var stored = null;
    try { stored = sessionStorage.getItem(SELECTED_KEY); sessionStorage.removeItem(SELECTED_KEY); } catch (err) { /* private mode */ }
    if (stored !== null) {
      var all = rows();
      if (all.length) select(all[Math.min(parseInt(stored, 10) || 0, all.length - 1)], true);
    }
  });
})();
