// Render first, then stream: the page shows the job as stored; the socket swaps newer
// fragments in (hx-swap-oob). After a reconnect we may have missed pushes, so each live
// block fetches its own fragment again.
(function () {
  let opened = false;
  document.addEventListener("htmx:wsOpen", function () {
    if (!opened) { opened = true; return; }
    document.querySelectorAll("[data-live-src]").forEach(function (el) {
      htmx.ajax("GET", el.dataset.liveSrc, { target: el, swap: "outerHTML" });
    });
  });
})();
