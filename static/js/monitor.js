// Latency percentiles per hour for one bundle.
(function () {
  "use strict";
  const rows = JSON.parse(document.getElementById("monitor-data").textContent);
  const line = function (key, colour) {
    return {label: key, data: rows.map(function (r) { return r[key]; }), borderColor: colour, fill: false};
  };
  new Chart(document.getElementById("latency-chart"), {
    type: "line",
    data: {labels: rows.map(function (r) { return r.hour.slice(5, 16).replace("T", " "); }),
           datasets: [line("p50_ms", "#2a8a4a"), line("p95_ms", "#d29922"), line("p99_ms", "#c93c37")]},
    options: {animation: false, scales: {y: {title: {display: true, text: "ms"}}}},
  });
})();
