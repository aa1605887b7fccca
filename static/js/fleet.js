// Backup center, live: the page's socket watches the subscriptions it shows (fleet.<id>).
// A push says only that something there changed (#fleet-changed, portal.realtime
// FLEET_CHANGED); the page then fetches its results again through its filter form, so with
// the filters as they are now, at most once a second however many changes arrive together.
// The form's requests replace each other (hx-sync): a filter just chosen and a refresh never
// land out of order. A refresh waits while the form's own request is in flight (htmx marks
// the form htmx-request): it would replace that request, and with it the URL the user's
// choice pushes. Whenever the socket opens (a push may have been missed) it refreshes too.
// A refresh shows the filters the form holds, which are the address's unless the user changed
// one before the scripts ran (htmx saw no change event): the address then follows what is shown,
// replaced in place, so a reload or a shared link gives the same results.
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
    var shown = new URLSearchParams(new FormData(form)).toString();
    window.htmx.ajax("GET", form.getAttribute("hx-get"), {
      source: form, target: "#backup-center-results", swap: "outerHTML", push: "false"
    }).then(function () { follow(form, shown); }, function () {});
  }

  // The filters the address stands for: those the page was rendered with (the form's defaults)
  // until the form's own request pushes its own.
  var addressed = null;

  function rendered(form) {
    var params = new URLSearchParams();
    Array.prototype.forEach.call(form.elements, function (el) {
      if (!el.name) return;
      if (el.tagName === "SELECT") {
        var chosen = Array.prototype.find.call(el.options, function (o) { return o.defaultSelected; });
        params.append(el.name, (chosen || el.options[0] || { value: "" }).value);
      } else if (el.tagName === "INPUT") {
        params.append(el.name, el.defaultValue);
      }
    });
    return params.toString();
  }

  function follow(form, shown) {
    if (addressed === null) addressed = rendered(form);
    if (shown === addressed) return;
    addressed = shown;
    window.history.replaceState(window.history.state, "", form.getAttribute("hx-get") + "?" + shown);
  }

  document.addEventListener("htmx:pushedIntoHistory", function () {
    var form = document.getElementById("backup-center-filters");
    if (form) addressed = new URLSearchParams(new FormData(form)).toString();
  });
  document.addEventListener("htmx:historyRestore", function () { addressed = null; });

  function soon() {
    if (!timer) timer = setTimeout(refresh, Math.max(0, last + GAP_MS - Date.now()));
  }

  document.addEventListener("htmx:oobAfterSwap", function (event) {
    var target = event.detail && event.detail.target;
    if (target && target.id === "fleet-changed") soon();
  });
  document.addEventListener("htmx:wsOpen", soon);
})();
