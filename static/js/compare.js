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
