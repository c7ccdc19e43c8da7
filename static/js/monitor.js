// Latency percentiles and confidence PSI per hour for one bundle.
(function () {
  "use strict";
  const rows = JSON.parse(document.getElementById("monitor-data").textContent);
  const labels = rows.map(function (r) { return r.hour.slice(5, 16).replace("T", " "); });
  const line = function (key, colour) {
    return {label: key, data: rows.map(function (r) { return r[key]; }), borderColor: colour, fill: false};
  };
  new Chart(document.getElementById("latency-chart"), {
    type: "line",
    data: {labels: labels,
           datasets: [line("p50_ms", "#2a8a4a"), line("p95_ms", "#d29922"), line("p99_ms", "#c93c37")]},
    options: {animation: false, scales: {y: {title: {display: true, text: "ms"}}}},
  });
  const psiCanvas = document.getElementById("psi-chart");
  if (psiCanvas) {
    // The conventional thresholds drawn as flat lines next to the measured PSI.
    const flat = function (value, label, colour) {
      return {label: label, data: rows.map(function () { return value; }), borderColor: colour,
              borderDash: [6, 4], pointRadius: 0, fill: false};
    };
    new Chart(psiCanvas, {
      type: "line",
      data: {labels: labels, datasets: [line("confidence_psi", "#3b6fd1"),
                                        flat(0.1, "0.1 moderate", "#d29922"),
                                        flat(0.25, "0.25 major", "#c93c37")]},
      options: {animation: false, spanGaps: true, scales: {y: {min: 0, title: {display: true, text: "PSI"}}}},
    });
  }
})();
