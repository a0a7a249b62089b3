// The undo window of an approved irreversible action: count down to when it executes, then
// reload so the page says what happened ("Sent at 14:02"). No inline script (CSP).
(function () {
  "use strict";

  function tick() {
    // .countdown-chip: the same countdown in the page's head (review/detail.html).
    var spans = document.querySelectorAll(
      ".countdown[data-execute-after], .countdown-chip[data-execute-after]"
    );
    var done = false;
    Array.prototype.forEach.call(spans, function (span) {
      var at = Date.parse(span.getAttribute("data-execute-after"));
      if (isNaN(at)) return;
      var left = Math.max(0, Math.ceil((at - Date.now()) / 1000));
      span.textContent = String(left);
      if (left === 0 && !span.hasAttribute("data-expired")) {
        span.setAttribute("data-expired", "");
        // Its own Undo (a bulk approval's page lists several).
        var scope = span.closest(".settlement") || document;
        var undo = scope.querySelector("[data-undo]");
        if (undo) undo.disabled = true;
        done = true;
      }
    });
    // A moment for the worker to run it, then show what really happened.
    if (done) window.setTimeout(function () { window.location.reload(); }, 2500);
  }

  document.addEventListener("DOMContentLoaded", function () {
    tick();
    window.setInterval(tick, 500);
  });
})();
