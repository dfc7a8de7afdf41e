// lorareg UI: the only script. Pages work without it; it adds auto-refresh and local times.
(function () {
  "use strict";
  var KEY = "lorareg.autorefresh";
  document.querySelectorAll("input[data-autorefresh]").forEach(function (box) {
    var seconds = parseInt(box.getAttribute("data-autorefresh"), 10) || 10;
    var timer = null;
    function apply() {
      if (timer) { clearTimeout(timer); timer = null; }
      if (box.checked) { timer = setTimeout(function () { location.reload(); }, seconds * 1000); }
    }
    box.checked = localStorage.getItem(KEY) === "on";
    box.addEventListener("change", function () {
      localStorage.setItem(KEY, box.checked ? "on" : "off");
      apply();
    });
    apply();
  });
  // Hover a relative time to see it in the browser's time zone.
  document.querySelectorAll("time[datetime]").forEach(function (el) {
    var when = new Date(el.getAttribute("datetime"));
    if (!isNaN(when)) { el.title = when.toLocaleString() + " (" + el.title + ")"; }
  });
})();
