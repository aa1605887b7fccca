// Render first, then stream: the page shows the job as stored; the socket swaps newer
// fragments in (hx-swap-oob). Each live block ([data-live-src]) fetches its own fragment
// again whenever the socket opens: shell.js does that for every page.
(function () {
  // A progress report that changes only numbers arrives as JSON (jobs.services.live.
  // job_progress_publish): {"job_progress": id, "fields": {name: text, width: n|null}}, or
  // several of them as {"job_progress_batch": [...]}.
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
    if (!message) return;
    if (message.job_progress_batch) {
      // Several jobs' reports at once (portal.realtime.LoopBatch).
      event.preventDefault();
      message.job_progress_batch.forEach(applyProgress);
      return;
    }
    if (!message.job_progress) return;
    event.preventDefault();
    applyProgress(message);
  });
})();
