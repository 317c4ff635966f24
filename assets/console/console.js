// bahi console: the little a page needs beyond forms. Loaded from bahi itself; the
// Content-Security-Policy allows no inline script.
(function () {
  "use strict";

  // Times are written in UTC by the server; show them in the viewer's zone, UTC on hover.
  function localizeTimes(root) {
    root.querySelectorAll("time[datetime]").forEach(function (element) {
      if (element.dataset.localized) return;
      var date = new Date(element.getAttribute("datetime"));
      if (isNaN(date.getTime())) return;
      element.title = element.textContent.trim() + " UTC";
      element.textContent = date.toLocaleString(undefined, {
        year: "numeric", month: "short", day: "numeric",
        hour: "2-digit", minute: "2-digit", second: "2-digit", timeZoneName: "short"
      });
      element.dataset.localized = "1";
    });
  }

  // <button data-copy="id-of-element">: copies that element's text (a secret shown once).
  function wireCopyButtons(root) {
    root.querySelectorAll("button[data-copy]").forEach(function (button) {
      if (button.dataset.wired) return;
      button.dataset.wired = "1";
      button.addEventListener("click", function () {
        var source = document.getElementById(button.dataset.copy);
        if (!source) return;
        var text = source.value !== undefined && source.value !== "" ? source.value : source.textContent;
        var done = function () { button.textContent = "Copied"; };
        if (navigator.clipboard && window.isSecureContext) {
          navigator.clipboard.writeText(text.trim()).then(done, function () { select(source); });
        } else {
          select(source);
        }
      });
    });
  }

  function select(element) {
    if (element.select) { element.select(); return; }
    var range = document.createRange();
    range.selectNodeContents(element);
    var selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
  }

  function enhance(root) {
    localizeTimes(root);
    wireCopyButtons(root);
  }

  document.addEventListener("DOMContentLoaded", function () { enhance(document); });
  document.addEventListener("htmx:afterSwap", function (event) { enhance(event.target); });
})();
