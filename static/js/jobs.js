// Render first, then stream: the page shows the job as stored; the socket swaps newer
// fragments in (hx-swap-oob). Whenever the socket opens we may have missed pushes — after a
// reconnect, and on the first open too (a job that ended between the page's render and the
// socket's open, like a seed import of a second), so each live block fetches its own
// fragment again.
(function () {
  document.addEventListener("htmx:wsOpen", function () {
    document.querySelectorAll("[data-live-src]").forEach(function (el) {
      htmx.ajax("GET", el.dataset.liveSrc, { target: el, swap: "outerHTML" });
    });
  });

  // A progress report that changes only numbers arrives as JSON (jobs.services.live.
  // job_progress_publish): {"job_progress": id, "fields": {name: text, width: n|null}}.
  // Its texts go into the [data-field] elements of the job's block and of its row.
  function applyProgress(message) {
    const roots = [
      document.getElementById("job-" + message.job_progress + "-live"),
      document.getElementById("job-row-" + message.job_progress),
    ];
    const fields = message.fields;
    roots.forEach(function (root) {
      if (!root) return;
      Object.keys(fields).forEach(function (name) {
        if (name === "width") return;
        root.querySelectorAll('[data-field="' + name + '"]').forEach(function (el) {
          el.textContent = fields[name];
          if (name === "current") el.title = fields[name] === "—" ? "" : fields[name];
        });
      });
      if (fields.width !== null && fields.width !== undefined) {
        root.querySelectorAll(".progress-fill").forEach(function (el) {
          el.setAttribute("data-width", fields.width);
          el.style.width = fields.width + "%";
        });
        root.querySelectorAll('[role="progressbar"]').forEach(function (el) {
          el.setAttribute("aria-valuenow", fields.width);
        });
      }
    });
  }
  document.addEventListener("htmx:wsBeforeMessage", function (event) {
    const text = event.detail.message;
    if (typeof text !== "string" || text.charAt(0) !== "{") return;
    let message;
    try { message = JSON.parse(text); } catch (e) { return; }
    if (!message || !message.job_progress) return;
    event.preventDefault();
    applyProgress(message);
  });
})();
