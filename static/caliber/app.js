// Keyboard flow for reviewers. No inline script anywhere: the CSP forbids it.
(function () {
  "use strict";
  function typing(e) {
    var t = e.target;
    return t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA" || t.tagName === "SELECT" || t.isContentEditable);
  }
  function rows() { return Array.prototype.slice.call(document.querySelectorAll("#queue-rows .row")); }
  function move(delta) {
    var all = rows();
    if (!all.length) return;
    var i = all.findIndex(function (r) { return r.classList.contains("selected"); });
    if (i >= 0) all[i].classList.remove("selected");
    i = Math.max(0, Math.min(all.length - 1, (i < 0 ? (delta > 0 ? -1 : all.length) : i) + delta));
    all[i].classList.add("selected");
    all[i].scrollIntoView({ block: "nearest" });
  }
  document.addEventListener("keydown", function (e) {
    if (e.defaultPrevented || e.ctrlKey || e.metaKey || e.altKey || typing(e)) return;
    if (e.key === "j") { move(1); e.preventDefault(); }
    else if (e.key === "k") { move(-1); e.preventDefault(); }
    else if (e.key === "Enter") {
      var sel = document.querySelector("#queue-rows .row.selected a");
      if (sel) { sel.click(); e.preventDefault(); }
    } else if (e.key === "a" || e.key === "r") {
      var btn = document.querySelector('.decision-form button[data-key="' + e.key + '"]');
      if (!btn) return;
      e.preventDefault();
      if (e.key === "r") {
        var reason = document.getElementById("id_reason");
        if (reason && !reason.value.trim()) { reason.focus(); return; }
      }
      btn.click();
    }
  });
  // A double click must not submit twice; the server would refuse the second anyway.
  document.addEventListener("submit", function (e) {
    var form = e.target;
    if (form.dataset.submitted) { e.preventDefault(); return; }
    form.dataset.submitted = "1";
  });
  document.addEventListener("htmx:wsOpen", function () { document.body.classList.remove("ws-down"); });
  document.addEventListener("htmx:wsClose", function () { document.body.classList.add("ws-down"); });
})();
