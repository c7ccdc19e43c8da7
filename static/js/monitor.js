// One bundle in the field, per minute, hour or day (the server picks the bucket from the
// range): latency percentiles, requests, accuracy, error rate and confidence PSI, with
// time labels in the viewer's time zone.
(function () {
  "use strict";
  const chart = JSON.parse(document.getElementById("monitor-data").textContent);
  const rows = chart.rows;
  const label = function (iso) {
    const when = new Date(iso);
    if (chart.bucket === "minute") { return when.toLocaleTimeString([], {hour: "2-digit", minute: "2-digit"}); }
    if (chart.bucket === "hour") { return when.toLocaleString([], {month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit"}); }
    return when.toLocaleDateString();
  };
  const labels = rows.map(function (r) { return label(r.at); });
  const line = function (key, title, colour, dash) {
    return {label: title, data: rows.map(function (r) { return r[key]; }), borderColor: colour,
            backgroundColor: colour, borderDash: dash || [], fill: false,
            pointRadius: rows.length > 60 ? 0 : 2};
  };
  const draw = function (id, datasets, yTitle, extra) {
    const canvas = document.getElementById(id);
    if (!canvas) { return; }
    new Chart(canvas, {
      type: "line",
      data: {labels: labels, datasets: datasets},
      options: {animation: false, spanGaps: true,
                scales: {y: Object.assign({title: {display: true, text: yTitle}}, extra || {})}},
    });
  };
  // Line styles differ as well as colours, so the series read without colour vision.
  draw("latency-chart", [line("p50_ms", "p50", "#2a8a4a"), line("p95_ms", "p95", "#d29922", [6, 3]),
                         line("p99_ms", "p99", "#c93c37", [2, 2])], "ms", {beginAtZero: true});
  draw("requests-chart", [line("requests", "requests", "#3b6fd1")], "requests", {beginAtZero: true});
  draw("accuracy-chart", [line("feedback_accuracy", "feedback accuracy", "#2a8a4a"),
                          line("golden_agreement", "golden agreement", "#8a4ad1", [6, 3])],
       "share", {min: 0, max: 1});
  draw("errors-chart", [line("error_rate", "error rate", "#c93c37")], "errors / requests", {beginAtZero: true});
  const psiCanvas = document.getElementById("psi-chart");
  if (psiCanvas) {
    // The conventional thresholds drawn as flat lines next to the measured PSI.
    const flat = function (value, title, colour) {
      return {label: title, data: rows.map(function () { return value; }), borderColor: colour,
              borderDash: [6, 4], pointRadius: 0, fill: false};
    };
    draw("psi-chart", [line("confidence_psi", "PSI", "#3b6fd1"), flat(0.1, "0.1 moderate", "#d29922"),
                       flat(0.25, "0.25 major", "#c93c37")], "PSI", {min: 0});
  }
})();
