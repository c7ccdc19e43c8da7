// Size (x) against latency (y): one point per variant with a measured latency (an
// unmeasured one is never drawn at 0), grouped so the legend explains the colours.
(function () {
  "use strict";
  const rows = JSON.parse(document.getElementById("compare-data").textContent);
  const groups = [
    {label: "★ recommended", colour: "#2a8a4a", style: "star", radius: 10,
     test: function (r) { return r.recommended; }},
    {label: "reference (the upload)", colour: "#65707d", style: "rect", radius: 7,
     test: function (r) { return r.parent === null; }},
    {label: "Pareto frontier", colour: "#1f6feb", style: "circle", radius: 6,
     test: function (r) { return r.pareto === "frontier"; }},
    {label: "dominated", colour: "#b8bec6", style: "circle", radius: 5,
     test: function (r) { return r.pareto === "dominated"; }},
    {label: "fidelity not measured", colour: "#d29922", style: "triangle", radius: 6,
     test: function () { return true; }},
  ];
  const plotted = rows.filter(function (r) { return r.latency_ms !== null && r.latency_ms !== undefined; });
  const datasets = groups.map(function (g) {
    return {label: g.label, data: [], backgroundColor: g.colour, borderColor: g.colour,
            pointStyle: g.style, pointRadius: g.radius};
  });
  plotted.forEach(function (r) {
    const index = groups.findIndex(function (g) { return g.test(r); });
    datasets[index].data.push({x: r.size_mb, y: r.latency_ms, label: "v" + r.number + " " + r.recipe,
                               fidelity: r.fidelity, ratio: r.latency_ratio, unmeasured: r.unmeasured});
  });
  new Chart(document.getElementById("compare-chart"), {
    type: "scatter",
    data: {datasets: datasets.filter(function (d) { return d.data.length; })},
    options: {
      animation: false,
      plugins: {legend: {display: true, position: "bottom"}, tooltip: {callbacks: {label: function (ctx) {
        const p = ctx.raw;
        const fidelity = p.unmeasured ? "not measured" : (p.fidelity === null ? "reference" : p.fidelity.toFixed(4));
        const ratio = p.ratio ? " (" + p.ratio.toFixed(2) + "× parent, interleaved)" : "";
        return p.label + ": " + p.x + " MB, " + p.y.toFixed(2) + " ms" + ratio + ", fidelity " + fidelity;
      }}}},
      scales: {x: {title: {display: true, text: "size (MB, stored artifact)"}},
               y: {title: {display: true, text: "latency p50 (ms)"}, beginAtZero: true}},
    },
  });
})();

// Latency (x) against fidelity to the original (y), one point per variant measured on
// both; the line joins the variants no other beats on both (the trade-off curve).
(function () {
  "use strict";
  const canvas = document.getElementById("origin-chart");
  if (!canvas) { return; }
  const rows = JSON.parse(document.getElementById("compare-data").textContent);
  const points = rows.filter(function (r) {
    return r.latency_ms !== null && r.latency_ms !== undefined &&
           r.origin_fidelity !== null && r.origin_fidelity !== undefined;
  }).map(function (r) {
    return {x: r.latency_ms, y: r.origin_fidelity, nn: r.origin_nn,
            label: "v" + r.number + " " + r.recipe};
  });
  const curve = points.filter(function (p) {
    return !points.some(function (q) {
      return q !== p && q.x <= p.x && q.y >= p.y && (q.x < p.x || q.y > p.y);
    });
  }).sort(function (a, b) { return a.x - b.x; });
  canvas.dataset.points = String(points.length);
  canvas.dataset.curve = String(curve.length);
  new Chart(canvas, {
    type: "scatter",
    data: {datasets: [
      {label: "trade-off curve", data: curve, showLine: true, borderColor: "#1f6feb",
       backgroundColor: "#1f6feb", pointRadius: 6},
      {label: "variants", data: points, backgroundColor: "#65707d", borderColor: "#65707d",
       pointRadius: 4},
    ]},
    options: {
      animation: false,
      plugins: {legend: {display: true, position: "bottom"}, tooltip: {callbacks: {label: function (ctx) {
        const p = ctx.raw;
        const nn = (p.nn === null || p.nn === undefined) ? "" : ", NN agreement " + p.nn.toFixed(3);
        return p.label + ": " + p.x.toFixed(2) + " ms, fidelity to the original " + p.y.toFixed(4) + nn;
      }}}},
      scales: {x: {title: {display: true, text: "latency p50 (ms)"}, beginAtZero: true},
               y: {title: {display: true, text: "fidelity to the original (cosine or agreement)"}}},
    },
  });
})();
