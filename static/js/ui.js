// Shared page behaviour: times in the viewer's time zone, and sortable tables.
// Pages work without it (times then read in UTC, tables in server order).
(function () {
  "use strict";

  // <time datetime="ISO">...UTC</time> -> the viewer's local time, UTC kept in the title.
  function localTimes(root) {
    root.querySelectorAll("time[datetime]").forEach(function (el) {
      const when = new Date(el.getAttribute("datetime"));
      if (isNaN(when.getTime())) { return; }
      el.title = el.textContent.trim();
      el.textContent = when.toLocaleString(undefined, {
        year: "numeric", month: "2-digit", day: "2-digit",
        hour: "2-digit", minute: "2-digit", second: el.dataset.seconds ? "2-digit" : undefined,
        timeZoneName: "short",
      });
    });
  }

  function cellValue(row, index) {
    const cell = row.cells[index];
    if (!cell) { return ""; }
    const time = cell.querySelector("time[datetime]");
    if (time) { return new Date(time.getAttribute("datetime")).getTime(); }
    const text = (cell.dataset.sort || cell.textContent).trim();
    const number = parseFloat(text.replace(/[^0-9.eE+-]/g, ""));
    return /^[-+]?[0-9.]/.test(text) && !isNaN(number) ? number : text.toLowerCase();
  }

  // Header cells become buttons (keyboard reachable); aria-sort says the order.
  function sortable(table) {
    const heads = table.tHead ? table.tHead.rows[0].cells : [];
    Array.prototype.forEach.call(heads, function (th, index) {
      if (!th.textContent.trim()) { return; }
      const button = document.createElement("button");
      button.type = "button";
      button.className = "sort";
      button.textContent = th.textContent;
      th.textContent = "";
      th.appendChild(button);
      button.addEventListener("click", function () {
        const ascending = th.getAttribute("aria-sort") !== "ascending";
        Array.prototype.forEach.call(heads, function (h) { h.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
        const body = table.tBodies[0];
        const rows = Array.prototype.filter.call(body.rows, function (r) { return !r.querySelector(".empty"); });
        rows.sort(function (a, b) {
          const x = cellValue(a, index), y = cellValue(b, index);
          const order = x < y ? -1 : x > y ? 1 : 0;
          return ascending ? order : -order;
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
  }

  function init(root) {
    localTimes(root);
    root.querySelectorAll("table[data-sortable]").forEach(function (table) {
      if (!table.dataset.sortReady) { table.dataset.sortReady = "1"; sortable(table); }
    });
  }

  document.addEventListener("DOMContentLoaded", function () { init(document); });
  document.addEventListener("htmx:afterSwap", function (event) { init(event.target); });
  window.tinyfleetUi = {localTimes: localTimes};
})();
