// The portal shell: navigation toggle, drop-down menus, toasts, copy buttons, and keeping
// the bell in step with the database when the live socket reconnects.
(function () {
  "use strict";
  var NARROW = "(max-width: 760px)";

  function narrow() { return window.matchMedia(NARROW).matches; }

  function setNavExpanded(expanded) {
    var toggle = document.querySelector("[data-nav-toggle]");
    if (toggle) toggle.setAttribute("aria-expanded", expanded ? "true" : "false");
  }

  function closeMenus(except) {
    document.querySelectorAll("details[data-menu][open]").forEach(function (menu) {
      if (menu !== except) menu.removeAttribute("open");
    });
  }

  document.addEventListener("click", function (event) {
    var toggle = event.target.closest("[data-nav-toggle]");
    if (toggle) {
      if (narrow()) {
        // On a phone the navigation slides over the page.
        setNavExpanded(document.body.classList.toggle("nav-open"));
      } else {
        var collapsed = document.body.classList.toggle("nav-collapsed");
        setNavExpanded(!collapsed);
        try { localStorage.setItem("haven.nav", collapsed ? "collapsed" : "open"); } catch (e) {}
      }
      return;
    }
    if (event.target.closest("[data-nav-close]") ||
        (narrow() && event.target.closest(".leftnav a"))) {
      document.body.classList.remove("nav-open");
      setNavExpanded(false);
    }
    // A click outside an open menu (bell, account) closes it.
    closeMenus(event.target.closest("details[data-menu]"));
    var close = event.target.closest("[data-toast-close]");
    if (close) close.closest(".toast").remove();
    var copy = event.target.closest("[data-copy]");
    if (copy) {
      var source = document.querySelector(copy.getAttribute("data-copy"));
      if (source && navigator.clipboard) {
        navigator.clipboard.writeText(source.textContent.trim()).then(function () {
          copy.textContent = "Copied";
        });
      }
    }
  });

  document.addEventListener("keydown", function (event) {
    // "/" jumps to global search, as in the Azure portal, unless the user is typing.
    if (event.key === "/" && !event.target.closest("input, textarea, select, [contenteditable]")) {
      var search = document.getElementById("global-search");
      if (search) { event.preventDefault(); search.focus(); }
      return;
    }
    if (event.key !== "Escape") return;
    closeMenus(null);
    document.body.classList.remove("nav-open");
    var results = document.getElementById("search-results");
    if (results) results.innerHTML = "";
  });

  document.addEventListener("DOMContentLoaded", function () {
    try {
      if (localStorage.getItem("haven.nav") === "collapsed" && !narrow()) {
        document.body.classList.add("nav-collapsed");
      }
    } catch (e) {}
    setNavExpanded(!narrow() && !document.body.classList.contains("nav-collapsed"));
    var toasts = document.getElementById("toasts");
    if (toasts) observer.observe(toasts, { childList: true });
  });

  // The Content-Security-Policy forbids inline handlers and style attributes, so markup
  // says what it wants in data- attributes: a select that submits its form on change, and
  // a bar's width (set through the CSSOM, which the policy allows), also in swapped-in
  // fragments (htmx:load fires for each).
  document.addEventListener("change", function (event) {
    var select = event.target.closest("[data-autosubmit]");
    if (select && select.form) select.form.requestSubmit();
    // A filter row's From and To apply to "Custom range" only (portal/_time_range.html).
    var range = event.target.closest("select[data-time-range]");
    if (range && range.form) {
      var custom = range.value === "custom";
      range.form.querySelectorAll("[data-custom-range]").forEach(function (label) {
        label.hidden = !custom;
        label.querySelectorAll("input").forEach(function (box) { box.disabled = !custom; });
      });
    }
  });
  function applyWidths(root) {
    if (root.matches && root.matches("[data-width]")) root.style.width = root.getAttribute("data-width") + "%";
    if (!root.querySelectorAll) return;
    root.querySelectorAll("[data-width]").forEach(function (el) {
      el.style.width = el.getAttribute("data-width") + "%";
    });
  }
  document.addEventListener("DOMContentLoaded", function () { applyWidths(document); });
  document.addEventListener("htmx:load", function (event) { applyWidths(event.target); });

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

  // One push goes to every page watching a group (a vault: its deployment page, its
  // overview, its jobs…) and carries the fragments each of them shows; a page swaps in those
  // whose target it has and leaves the rest (htmx would log "oobErrorNoTarget" for each).
  // The socket element names this extension: hx-ext="ws,live-targets" in base.html.
  function oobTarget(el) {
    var swap = el.getAttribute("hx-swap-oob") || "";
    var colon = swap.indexOf(":");
    if (colon !== -1) return swap.slice(colon + 1).trim();
    return el.id ? "#" + CSS.escape(el.id) : "";
  }
  if (window.htmx) {
    window.htmx.defineExtension("live-targets", {
      transformResponse: function (text) {
        if (typeof text !== "string" || text.trim().charAt(0) !== "<") return text;
        var holder = document.createElement("template");
        holder.innerHTML = text;
        var dropped = false;
        Array.prototype.slice.call(holder.content.children).forEach(function (el) {
          var target = oobTarget(el);
          if (target && !document.querySelector(target)) {
            el.remove();
            dropped = true;
          }
        });
        return dropped ? holder.innerHTML : text;
      }
    });
  }

  // Render first, then stream: whenever the socket opens we may have missed pushes — after a
  // reconnect, and on the first open too (a job or a vault deployment that ended between the
  // page's render and the socket's open), so each live block ([data-live-src]) fetches its
  // own fragment again.
  document.addEventListener("htmx:wsOpen", function () {
    if (!window.htmx) return;
    document.querySelectorAll("[data-live-src]").forEach(function (el) {
      window.htmx.ajax("GET", el.dataset.liveSrc, { target: el, swap: "outerHTML" });
    });
  });

  // The socket is a push, never the only copy: after a reconnect, fetch the bell again so
  // whatever was published while the socket was down shows up.
  var opened = 0;
  document.addEventListener("htmx:wsOpen", function (event) {
    opened += 1;
    document.body.setAttribute("data-live", "open");
    if (opened === 1) return;
    var live = document.getElementById("live");
    var bell = document.getElementById("bell");
    if (!live || !bell || !window.htmx) return;
    var wasOpen = bell.hasAttribute("open");
    window.htmx.ajax("GET", live.getAttribute("data-bell-url"), { target: "#bell", swap: "outerHTML" })
      .then(function () {
        if (wasOpen) document.getElementById("bell").setAttribute("open", "");
      });
  });
  document.addEventListener("htmx:wsClose", function () {
    document.body.setAttribute("data-live", "closed");
  });
})();
