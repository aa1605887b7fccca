// Vault pages: a checkbox with data-enables="<id>" enables that button while checked
// ("Already downloaded or using the latest Haven agent" -> Download vault credentials).
(function () {
  "use strict";
  function sync(box) {
    var target = document.getElementById(box.getAttribute("data-enables"));
    if (target) target.disabled = !box.checked || box.disabled;
  }
  document.addEventListener("change", function (event) {
    if (event.target.matches("[data-enables]")) sync(event.target);
  });
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-enables]").forEach(sync);
  });
})();
