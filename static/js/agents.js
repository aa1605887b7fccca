// Machines go Offline by saying nothing, so no push announces it. Each Online pill knows
// when the machine was last seen; when the offline threshold passes without a push, the
// pill asks the portal for its current state once (the database is the truth: a machine
// that kept sending heartbeats stays Online and is checked again at its new deadline).
// A page of Online machines therefore costs one request per machine per few minutes, and
// Offline ones none: coming back Online is pushed over the live socket.
(function () {
  "use strict";
  var timers = new WeakMap();

  function offlineAfter(pill) {
    var holder = pill.closest("[data-offline-after]");
    var seconds = holder ? parseInt(holder.dataset.offlineAfter, 10) : NaN;
    return isNaN(seconds) ? 180 : seconds;
  }

  function schedule(pill) {
    if (timers.has(pill) || !pill.dataset.statusSrc || !pill.dataset.lastSeen) return;
    var age = parseInt(pill.dataset.now, 10) - parseInt(pill.dataset.lastSeen, 10);
    var wait = Math.max(15, offlineAfter(pill) - (isNaN(age) ? 0 : age) + 2);
    timers.set(pill, window.setTimeout(function () {
      if (!pill.isConnected || !window.htmx) return;
      htmx.ajax("GET", pill.dataset.statusSrc, { target: pill, swap: "outerHTML" });
    }, wait * 1000));
  }

  function scan(root) {
    (root || document).querySelectorAll(".machine-status[data-status-src]").forEach(schedule);
  }

  document.addEventListener("DOMContentLoaded", function () { scan(); });
  // Pills swapped in by htmx (this refresh, a live push, a list refresh) start their own clock.
  document.addEventListener("htmx:load", function (event) {
    var el = event.detail.elt;
    if (el.matches && el.matches(".machine-status")) schedule(el);
    else if (el.querySelectorAll) scan(el);
  });
})();
