// Size (x) against latency (y), one point per variant, coloured by fidelity.
(function () {
  "use strict";
  const rows = JSON.parse(document.getElementById("compare-data").textContent);
  function colour(f) {
    if (f === null || f === undefined) return "#65707d";          // the reference
    if (f >= 0.998) return "#2a8a4a";
    if (f >= 0.99) return "#d29922";
    return "#c93c37";
  }
  const points = rows.map(function (r) {
    return {x: r.size_mb, y: r.latency_ms === null ? 0 : r.latency_ms, label: "v" + r.number + " " + r.recipe,
            fidelity: r.fidelity, recommended: r.recommended};
  });
  new Chart(document.getElementById("compare-chart"), {
    type: "scatter",
    data: {datasets: [{
      data: points,
      pointBackgroundColor: points.map(function (p) { return colour(p.fidelity); }),
      pointRadius: points.map(function (p) { return p.recommended ? 10 : 6; }),
      pointStyle: points.map(function (p) { return p.recommended ? "star" : "circle"; }),
    }]},
    options: {
      animation: false,
      plugins: {legend: {display: false}, tooltip: {callbacks: {label: function (ctx) {
        const p = ctx.raw;
        return p.label + ": " + p.x + " MB, " + p.y.toFixed(2) + " ms, fidelity " +
          (p.fidelity === null ? "reference" : p.fidelity.toFixed(4));
      }}}},
      scales: {x: {title: {display: true, text: "size (MB)"}}, y: {title: {display: true, text: "latency p50 (ms)"}}},
    },
  });
})();
