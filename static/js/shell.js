// The portal shell: navigation toggle, and keeping the bell in step with live pushes.
(function () {
  "use strict";
  document.addEventListener("click", function (event) {
    var toggle = event.target.closest("[data-nav-toggle]");
    if (!toggle) return;
    var collapsed = document.body.classList.toggle("nav-collapsed");
    toggle.setAttribute("aria-expanded", collapsed ? "false" : "true");
    try { localStorage.setItem("haven.nav", collapsed ? "collapsed" : "open"); } catch (e) {}
  });
  document.addEventListener("DOMContentLoaded", function () {
    try {
      if (localStorage.getItem("haven.nav") === "collapsed") document.body.classList.add("nav-collapsed");
    } catch (e) {}
  });
  // Toasts leave by themselves after a while.
  var observer = new MutationObserver(function (records) {
    records.forEach(function (record) {
      record.addedNodes.forEach(function (node) {
        if (node.nodeType === 1 && node.classList.contains("toast")) {
          setTimeout(function () { node.remove(); }, 8000);
        }
      });
    });
  });
  document.addEventListener("DOMContentLoaded", function () {
    var toasts = document.getElementById("toasts");
    if (toasts) observer.observe(toasts, { childList: true });
  });
})();
