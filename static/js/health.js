// A device's health per bucket (minute, hour or day, chosen by the server from the range),
// one small chart per gauge, labelled in the viewer's time zone.
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("health-data").textContent);
  const label = function (iso) {
    const when = new Date(iso);
    if (data.bucket === "minute") { return when.toLocaleTimeString([], {hour: "2-digit", minute: "2-digit"}); }
    if (data.bucket === "hour") { return when.toLocaleString([], {month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit"}); }
    return when.toLocaleDateString();
  };
  const labels = data.points.map(function (p) { return label(p.at); });
  document.querySelectorAll("canvas[data-metric]").forEach(function (canvas) {
    const key = canvas.dataset.metric;
    new Chart(canvas, {
      type: key === "dropped" ? "bar" : "line",
      data: {labels: labels, datasets: [{
        label: canvas.dataset.unit,
        data: data.points.map(function (p) { return p[key]; }),
        borderColor: key === "dropped" ? "#c93c37" : "#3b6fd1",
        backgroundColor: key === "dropped" ? "#c93c37" : "#3b6fd1",
        pointRadius: data.points.length > 60 ? 0 : 2,
        fill: false,
      }]},
      options: {animation: false, spanGaps: true, plugins: {legend: {display: false}},
                scales: {y: {beginAtZero: key !== "temp_c", title: {display: true, text: canvas.dataset.unit}}}},
    });
  });
})();
