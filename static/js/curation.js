/* Keyboard shortcuts of the item page. Every shortcut clicks a real link or button of the page,
 * so the page does the same with or without this script; "?" shows the list. */
(function () {
  "use strict";

  var active = 0;

  function panel() { return document.getElementById("item-panel"); }
  function questions() {
    var root = panel();
    return root ? Array.prototype.slice.call(root.querySelectorAll("[data-question]")) : [];
  }

  function setActive(index, scroll) {
    var all = questions();
    if (!all.length) { return; }
    active = Math.max(0, Math.min(index, all.length - 1));
    all.forEach(function (question, i) { question.classList.toggle("is-active", i === active); });
    if (scroll) { all[active].scrollIntoView({ block: "nearest", behavior: "smooth" }); }
  }

  function firstUnanswered() {
    var all = questions();
    for (var i = 0; i < all.length; i++) {
      if (!all[i].classList.contains("answered")) { return i; }
    }
    return 0;
  }

  function click(selector) {
    var root = panel();
    var element = root && root.querySelector(selector);
    if (element && !element.classList.contains("disabled")) { element.click(); return true; }
    return false;
  }

  function isTyping(element) {
    if (!element) { return false; }
    if (element.isContentEditable || element.tagName === "TEXTAREA" || element.tagName === "SELECT") {
      return true;
    }
    return element.tagName === "INPUT" &&
      ["radio", "checkbox", "button", "submit", "hidden"].indexOf(element.type) === -1;
  }

  function markAnswered(question) {
    var filled = Array.prototype.some.call(
      question.querySelectorAll("input, textarea"),
      function (input) {
        return (input.type === "radio" || input.type === "checkbox") ? input.checked : input.value !== "";
      }
    );
    question.classList.toggle("answered", filled);
  }

  function pickOption(number) {
    var question = questions()[active];
    if (!question) { return; }
    var inputs = question.querySelectorAll("input[type=radio], input[type=checkbox]");
    var input = inputs[number - 1];
    if (!input) { return; }
    input.checked = input.type === "radio" ? true : !input.checked;
    input.dispatchEvent(new Event("change", { bubbles: true }));
    markAnswered(question);
    if (input.type === "radio") { setActive(active + 1, true); }
  }

  function editOutput() {
    var details = document.getElementById("edit-output");
    if (!details) { return; }
    details.open = true;
    var area = details.querySelector("textarea");
    if (area) { area.focus(); area.scrollIntoView({ block: "center", behavior: "smooth" }); }
  }

  function toggleHelp() {
    var dialog = document.getElementById("shortcut-help");
    if (!dialog || typeof dialog.showModal !== "function") { return; }
    if (dialog.open) { dialog.close(); } else { dialog.showModal(); }
  }

  function fillSuggestion(chip) {
    var question = chip.closest("[data-question]");
    var value = chip.getAttribute("data-fill");
    if (!question) { return; }
    var matched = false;
    question.querySelectorAll("input[type=radio], input[type=checkbox]").forEach(function (input) {
      var hit = value.split(", ").indexOf(input.value) !== -1;
      if (input.type === "radio" ? input.value === value : hit) { input.checked = true; matched = true; }
      else if (input.type === "checkbox") { input.checked = false; }
    });
    if (!matched) {
      var field = question.querySelector("textarea, input[type=number], input[type=text]");
      if (field) { field.value = value; }
    }
    markAnswered(question);
  }

  document.addEventListener("keydown", function (event) {
    if (!panel()) { return; }
    var key = event.key;
    if ((event.ctrlKey || event.metaKey) && key === "Enter") {
      event.preventDefault();
      click("[data-action=submit]");
      return;
    }
    if (key === "Escape") {
      if (isTyping(document.activeElement)) { document.activeElement.blur(); }
      return;
    }
    if (event.ctrlKey || event.metaKey || event.altKey || isTyping(document.activeElement)) { return; }
    if (document.querySelector("dialog[open]") && key !== "?") { return; }

    var handled = true;
    if (key === "ArrowRight" || key === "n") { click("[data-nav=next]"); }
    else if (key === "ArrowLeft" || key === "p") { click("[data-nav=prev]"); }
    else if (key === "j") { setActive(active + 1, true); }
    else if (key === "k") { setActive(active - 1, true); }
    else if (key === "g") { click("[data-action=star]"); }
    else if (key === "s") { click("[data-action=submit]"); }
    else if (key === "d") { click("[data-action=draft]"); }
    else if (key === "x") { click("[data-action=discard]"); }
    else if (key === "u") { click("[data-action=use-model]"); }
    else if (key === "e") { editOutput(); }
    else if (key === "?") { toggleHelp(); }
    else if (/^[1-9]$/.test(key)) { pickOption(parseInt(key, 10)); }
    else { handled = false; }
    if (handled) { event.preventDefault(); }
  });

  document.addEventListener("click", function (event) {
    var chip = event.target.closest && event.target.closest("[data-fill]");
    if (chip) { fillSuggestion(chip); return; }
    var question = event.target.closest && event.target.closest("[data-question]");
    if (question) { setActive(questions().indexOf(question), false); }
  });

  document.addEventListener("change", function (event) {
    var question = event.target.closest && event.target.closest("[data-question]");
    if (question) { markAnswered(question); }
  });

  // A new item (page load or HTMX swap) starts at its first unanswered question.
  var shownItem = null;
  function start() {
    var root = panel();
    if (!root || root.getAttribute("data-item") === shownItem && root.querySelector(".is-active")) {
      return;
    }
    shownItem = root.getAttribute("data-item");
    setActive(firstUnanswered(), false);
  }
  document.addEventListener("DOMContentLoaded", start);
  document.addEventListener("htmx:afterSettle", start);
})();
