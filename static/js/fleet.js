// Backup center, live: the page's socket watches the subscriptions it shows (fleet.<id>).
// A push says only that something there changed (#fleet-changed, portal.realtime
// FLEET_CHANGED); the page then fetches its results again through its filter form, so with
// the filters as they are now, at most once a second however many changes arrive together.
// The form's requests replace each other (hx-sync): a filter just chosen and a refresh never
// land out of order. A refresh waits while the form's own request is in flight (htmx marks
// the form htmx-request): it would replace that request, and with it the URL the user's
// choice pushes. Whenever the socket opens (a push may have been missed) it refreshes too.
// A refresh shows the filters the form holds, which are the address's unless the user changed
// one before the scripts ran (htmx saw no change event): the portal then answers with
// HX-Replace-Url (its header named by the form's data-refresh-header), so the address follows
// what is shown, replaced in place, and a reload or a shared link gives the same results.
(function () {
  "use strict";

  var GAP_MS = 1000;
  var BUSY_RETRY_MS = 100;
  var timer = null;
  var last = 0;

  function refresh() {
    timer = null;
    var form = document.getElementById("backup-center-filters");
    if (!form || !window.htmx) return;
    if (form.classList.contains("htmx-request")) {
      timer = setTimeout(refresh, BUSY_RETRY_MS);
      return;
    }
    last = Date.now();
    var headers = {};
    headers[form.dataset.refreshHeader] = "1";
    window.htmx.ajax("GET", form.getAttribute("hx-get"), {
      source: form, target: "#backup-center-results", swap: "outerHTML", push: "false",
      headers: headers
    }).catch(function () {});  // a refresh replaced or failed: the next one shows the truth
  }

  function soon() {
    if (!timer) timer = setTimeout(refresh, Math.max(0, last + GAP_MS - Date.now()));
  }

  document.addEventListener("htmx:oobAfterSwap", function (event) {
    var target = event.detail && event.detail.target;
    if (target && target.id === "fleet-changed") soon();
  });
  document.addEventListener("htmx:wsOpen", soon);

  // Back or Forward to a page htmx kept: its copy holds the form as first rendered (a
  // select's choice is no attribute), so the form takes the filters of the address again,
  // as the results it shows do, and the next refresh fetches those.
  document.addEventListener("htmx:historyRestore", function () {
    var form = document.getElementById("backup-center-filters");
    if (!form) return;
    var params = new URLSearchParams(window.location.search);
    Array.prototype.forEach.call(form.elements, function (el) {
      if (!el.name || (el.tagName !== "SELECT" && el.tagName !== "INPUT")) return;
      if (params.has(el.name)) {
        el.value = params.get(el.name);
      } else if (el.tagName === "SELECT") {
        var blank = Array.prototype.find.call(el.options, function (o) { return o.value === ""; });
        el.value = blank ? "" : el.options[0].value;
      } else {
        el.value = "";
      }
    });
  });
})();
