// Recover Data wizard: the calendar's days show their times (a day's fieldset is loaded
// from the server the first time it is chosen, and kept: a point chosen on one day stays
// chosen while another day is shown), the selection survives
// browsing between folders (hidden inputs "paths"), and a version or search result picks
// its recovery point. The server does the rest; this only keeps the form in step.
(function () {
  "use strict";

  function form() { return document.getElementById("recover-form"); }

  function selected() {
    var f = form();
    return f ? Array.prototype.map.call(f.querySelectorAll("#selection input[name=paths]"),
      function (i) { return i.value; }) : [];
  }

  function chosenPoint() {
    var f = form();
    return f ? f.querySelector("input[name=rp]:checked") : null;
  }

  var SYSTEM_STATE = "system-state";  // the recovery point's System State part (protocol)

  function isSystemState(path) {
    return path === SYSTEM_STATE || path.indexOf(SYSTEM_STATE + "/") === 0;
  }

  // System State goes to a folder the person names, never to the original location.
  function refreshLocation(f, paths) {
    var state = paths.some(isSystemState);
    var original = f.querySelector("input[name=location][value=original]");
    var another = f.querySelector("input[name=location][value=another]");
    if (original) {
      original.disabled = state;
      if (state && original.checked && another) another.checked = true;
    }
    var note = document.getElementById("system-state-note");
    if (note) note.hidden = !state;
    var files = f.querySelector(".recovery-files");
    var mode = f.querySelector("input[name=recover_mode]:checked");
    if (files) files.hidden = !!mode && mode.value === "system_state";
  }

  function refresh() {
    var f = form();
    if (!f) return;
    var paths = selected();
    refreshLocation(f, paths);
    var point = chosenPoint();
    var count = f.querySelector("[data-field=selected-count]");
    if (count) count.textContent = String(paths.length);
    var label = f.querySelector("[data-field=point-label]");
    if (label) label.textContent = point ? point.getAttribute("data-label") : "none chosen";
    var damaged = f.querySelector("[data-field=damaged-warning]");
    if (damaged) {
      var files = point ? point.getAttribute("data-damaged") : null;
      damaged.hidden = !files;
      damaged.querySelector("[data-field=damaged-files]").textContent = files || "";
    }
    var ready = paths.length > 0 && !!point;
    f.querySelectorAll("[data-action=recover], [data-action=download]").forEach(function (b) {
      b.disabled = !ready;
    });
    document.querySelectorAll(".wizard-steps [data-step]").forEach(function (li) {
      var step = li.getAttribute("data-step");
      var done = step === "point" ? !!point : step === "items" ? paths.length > 0 : false;
      li.classList.toggle("done", done);
      li.classList.toggle("active", !done && (step === "point" || (step === "items" && point) ||
        (step === "options" && point && paths.length > 0)));
    });
    f.querySelectorAll("input[data-select]").forEach(function (box) {
      box.checked = paths.indexOf(box.value) !== -1;
    });
  }

  function add(path) {
    if (selected().indexOf(path) !== -1) return;
    var li = document.createElement("li");
    var input = document.createElement("input");
    input.type = "hidden"; input.name = "paths"; input.value = path;
    var name = document.createElement("span");
    name.className = path === SYSTEM_STATE ? "" : "mono";
    name.textContent = path === SYSTEM_STATE ? "System State" : path;
    var remove = document.createElement("button");
    remove.type = "button"; remove.className = "link"; remove.textContent = "Remove";
    remove.setAttribute("data-remove", path);
    remove.setAttribute("aria-label", "Remove " + name.textContent);
    li.appendChild(input); li.appendChild(name); li.appendChild(document.createTextNode(" "));
    li.appendChild(remove);
    document.getElementById("selection").appendChild(li);
  }

  function drop(path) {
    document.querySelectorAll("#selection input[name=paths]").forEach(function (i) {
      if (i.value === path) i.parentNode.remove();
    });
  }

  // GET one day's times (?day=) or the day of a point (?rp=) and add its fieldset; resolves
  // with the fieldset (the one already there if two loads crossed).
  var loading = {};
  function loadTimes(param, value) {
    var key = param + "=" + value;
    if (loading[key]) return loading[key];
    var f = form();
    var query = new URLSearchParams();
    query.set(param, value);
    var region = f.querySelector("input[name=region]");
    if (region) query.set("region", region.value);
    var box = f.querySelector(".recovery-times");
    loading[key] = fetch(f.getAttribute("data-times") + "?" + query.toString(), {
      credentials: "same-origin", headers: {"HX-Request": "true"}
    }).then(function (response) {
      if (response.redirected) throw new LoadError("signed-out");  // to the sign-in page
      if (response.ok) return response.text();
      var plain = (response.headers.get("Content-Type") || "").indexOf("text/plain") === 0;
      return (plain ? response.text() : Promise.resolve("")).then(function (text) {
        throw new LoadError(response.status, text);
      });
    }, function () {
      throw new LoadError("unreachable");  // no answer at all: the portal or the network
    }).then(function (html) {
      var holder = document.createElement("template");
      holder.innerHTML = html;
      var fs = holder.content.querySelector("fieldset.times");
      if (!fs) throw new LoadError("signed-out");
      var day = fs.getAttribute("data-day");
      var there = box.querySelector("fieldset.times[data-day='" + day + "']");
      if (there) return there;
      box.appendChild(fs);
      htmx.process(fs);  // its radios browse the point they choose
      return fs;
    }).finally(function () { delete loading[key]; });
    return loading[key];
  }

  // Why something the wizard asked the portal for did not load, in words a person can act on
  // (``what``: "the times of 06 December 2026", "that recovery point's times", "the folder").
  function LoadError(status, text) { this.status = status; this.text = text || ""; }

  function loadMessage(error, what) {
    var status = error instanceof LoadError ? error.status : "script";
    if (status === "unreachable") {
      return "The portal did not answer, so " + what + " could not be loaded. Check that " +
        "you are still connected to it, then try again.";
    }
    if (status === "signed-out") {
      return "Your sign-in has ended, so " + what + " could not be loaded. Reload the page " +
        "and sign in again.";
    }
    if (status === 400 && error.text) return error.text;
    if (status === 403) {
      return "You may no longer recover from this machine (your role changed). Reload the " +
        "page to see what you can do now.";
    }
    if (status === 404) {
      return what.indexOf("recovery point") !== -1
        ? "That recovery point is no longer there (it may have expired or been deleted). " +
          "Reload the page to see the recovery points there are now."
        : "This machine or its recovery points are no longer there for you. Reload the page.";
    }
    if (status === 429 || (typeof status === "number" && status >= 500)) {
      return "The portal could not load " + what + " just now (error " + status + "). " +
        "Try again in a moment.";
    }
    return "Something went wrong, so " + what + " could not be loaded (" + status + "). " +
      "Reload the page.";
  }

  // Say in ``place`` why ``what`` did not load, with a way to try again (``retry``).
  function showLoadError(place, error, what, retry) {
    clearLoadError(place);
    var note = document.createElement("div");
    note.className = "callout warning load-error";
    note.setAttribute("role", "alert");
    var words = document.createElement("p");
    words.textContent = loadMessage(error, what);
    var again = document.createElement("button");
    again.type = "button"; again.className = "button"; again.textContent = "Try again";
    again.addEventListener("click", function () { clearLoadError(place); retry(); });
    note.appendChild(words); note.appendChild(again);
    place.appendChild(note);
  }

  function clearLoadError(place) {
    place.querySelectorAll(".load-error").forEach(function (n) { n.remove(); });
  }

  // The times did not load: why, in place of the times (those loaded stay, hidden).
  function showTimesError(error, what, retry) {
    var box = form().querySelector(".recovery-times");
    box.querySelectorAll("fieldset.times").forEach(function (fs) { fs.hidden = true; });
    showLoadError(box, error, what, retry);
  }

  // What a folder, search or versions question asks for, by the word in its URL.
  var ASKED = {browse: "the folder", search: "the search results", versions: "the file's versions"};

  // A browse, search or versions question, or the poll for its answer, that failed on the
  // network or with a 4xx/5xx (htmx swaps neither): why, in its place (#browser or
  // #versions; a spinner left there would wait for ever), and Try again sends the same
  // request again (its values kept: the link that sent it may be gone with the listing).
  function showAskError(event, error) {
    var detail = event.detail;
    var place = detail.target && detail.target.closest("#browser, #versions");
    if (!place || !form() || !form().contains(place)) return;
    var config = detail.requestConfig;
    var asked = /\/ask\/([a-z]+)\/$/.exec(config.path.split("?")[0]);
    var what = asked ? ASKED[asked[1]] || "the answer" : "the agent's answer";
    var values = {};
    if (config.verb !== "get" && config.formData) {
      config.formData.forEach(function (value, key) {
        (values[key] = values[key] || []).push(value);
      });
    }
    place.textContent = "";
    showLoadError(place, error, what, function () {
      place.textContent = "";
      htmx.ajax(config.verb.toUpperCase(), config.path,
        {source: place, target: place, swap: "innerHTML", values: values});
    });
  }

  document.addEventListener("htmx:sendError", function (event) {
    showAskError(event, new LoadError("unreachable"));
  });
  document.addEventListener("htmx:responseError", function (event) {
    var xhr = event.detail.xhr;
    var plain = (xhr.getResponseHeader("Content-Type") || "").indexOf("text/plain") === 0;
    showAskError(event, new LoadError(xhr.status, plain ? xhr.responseText : ""));
  });

  function pointRadio(id) {
    return form().querySelector("input[name=rp][value='" + id + "']");
  }

  // Choose the point ``id`` (loading its day first when it is not on the page), then ``done``.
  function choosePoint(id, done) {
    var take = function () {
      var radio = pointRadio(id);
      if (!radio) return;
      radio.checked = true;  // no change event: the listing in view stays
      showDay(radio.closest("fieldset.times").getAttribute("data-day"));
      if (done) done();
    };
    if (pointRadio(id)) take();
    else loadTimes("rp", id).then(take, function (error) {
      showTimesError(error, "that recovery point's times", function () { choosePoint(id, done); });
    });
  }

  function showDay(day) {
    clearLoadError(form().querySelector(".recovery-times"));
    var shown = null;
    document.querySelectorAll("fieldset.times").forEach(function (fs) {
      fs.hidden = fs.getAttribute("data-day") !== day;
      if (!fs.hidden) shown = fs;
    });
    markDay(day);
    return shown;
  }

  // A day shown with a single point that can be chosen: it is chosen (and its folders
  // browsed) as if clicked, unless it already is, or items of another point are selected
  // (choosing would drop them: that choice stays until the person picks a time).
  function chooseOnly(fs) {
    if (!fs) return;
    var radios = fs.querySelectorAll("input[name=rp]:not([disabled])");
    if (radios.length !== 1 || radios[0].checked) return;
    if (chosenPoint() && selected().length) return;
    radios[0].checked = true;
    radios[0].dispatchEvent(new Event("change", {bubbles: true}));  // htmx browses it
  }

  function markDay(day) {
    document.querySelectorAll(".calendar-day.has-points").forEach(function (b) {
      var chosen = b.getAttribute("data-day") === day;
      b.classList.toggle("selected", chosen);
      if (chosen) b.setAttribute("aria-current", "date");
      else b.removeAttribute("aria-current");
    });
  }

  function chooseDay(link) {
    var day = link.getAttribute("data-day");
    if (document.querySelector("fieldset.times[data-day='" + day + "']")) {
      chooseOnly(showDay(day));
      return;
    }
    loadTimes("day", day).then(function () { chooseOnly(showDay(day)); }, function (error) {
      markDay(day);  // the day chosen, its times replaced by why they are not there
      var label = (link.getAttribute("aria-label") || day).split(",")[0];
      showTimesError(error, "the times of " + label, function () { chooseDay(link); });
    });
  }

  document.addEventListener("click", function (event) {
    var day = event.target.closest(".calendar-day.has-points");
    if (day) {
      event.preventDefault();  // the link re-renders the page with that day (no script)
      chooseDay(day);
      return;
    }
    var remove = event.target.closest("[data-remove]");
    if (remove) {
      drop(remove.getAttribute("data-remove"));
      var files = form().querySelector("input[name=recover_mode][value=files]");
      if (files && !selected().some(isSystemState)) files.checked = true;  // back to browsing
      refresh();
      return;
    }
    var version = event.target.closest("[data-use-version]");
    if (version) {
      choosePoint(version.getAttribute("data-rp"), function () {
        selected().forEach(drop);
        add(version.getAttribute("data-path"));
        refresh();
        document.getElementById("step-options").scrollIntoView({behavior: "smooth"});
      });
    }
  });

  document.addEventListener("change", function (event) {
    var box = event.target.closest("input[data-select]");
    if (box) {
      if (box.checked) {
        if (box.getAttribute("data-rp") && !chosenPoint()) {
          choosePoint(box.getAttribute("data-rp"), refresh);
        }
        add(box.value);
      } else {
        drop(box.value);
      }
      refresh();
      return;
    }
    if (event.target.name === "rp") {
      var keep = selected().filter(function (p) { return p === SYSTEM_STATE; });
      selected().forEach(drop);  // items belong to one recovery point (System State: to each)
      keep.forEach(add);
      refresh();
    }
    if (event.target.name === "recover_mode") {
      selected().forEach(drop);
      if (event.target.value === "system_state") add(event.target.getAttribute("data-path"));
      refresh();
      return;
    }
    if (event.target.name === "folder") {
      var another = form().querySelector("input[name=location][value=another]");
      if (another && event.target.value) another.checked = true;
    }
  });

  document.addEventListener("keydown", function (event) {
    if (event.key === "Enter" && event.target.name === "q") {
      event.preventDefault();
      var button = form().querySelector("[data-action=search]");
      if (button) button.click();
    }
  });

  document.addEventListener("htmx:afterSwap", refresh);
  document.addEventListener("DOMContentLoaded", function () {
    refresh();  // the server shows the chosen day, and the point chosen (a day's only one)
    var point = chosenPoint();
    if (point) point.dispatchEvent(new Event("change", {bubbles: true}));  // browse it
  });
})();
