// One device's daily p95 latency and requests, per bundle.
(function () {
  "use strict";
  const rows = JSON.parse(document.getElementById("device-data").textContent);
  const days = Array.from(new Set(rows.map(function (r) { return r.day; })));
  const bundles = Array.from(new Set(rows.map(function (r) { return r.bundle; })));
  const colours = ["#2a8a4a", "#d29922", "#c93c37", "#3b6fd1", "#8a4ad1"];
  const datasets = bundles.map(function (bundle, i) {
    return {
      label: "p95 ms, " + bundle,
      data: days.map(function (day) {
        const row = rows.find(function (r) { return r.day === day && r.bundle === bundle; });
        return row ? row.p95_ms : null;
      }),
      borderColor: colours[i % colours.length],
      fill: false,
    };
  });
  new Chart(document.getElementById("device-chart"), {
    type: "line",
    data: {labels: days, datasets: datasets},
    options: {animation: false, spanGaps: true, scales: {y: {title: {display: true, text: "p95 ms"}}}},
  });
})();
