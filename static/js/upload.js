// Drag-and-drop upload with a progress bar. Without JavaScript the form posts normally.
(function () {
  "use strict";
  const form = document.getElementById("upload-form");
  const input = document.getElementById("file-input");
  const zone = document.getElementById("drop-zone");
  const nameLabel = document.getElementById("file-name");
  const bar = document.getElementById("upload-progress");
  const status = document.getElementById("upload-status");
  const button = document.getElementById("upload-button");
  let chosen = null;

  function choose(file) {
    chosen = file;
    nameLabel.textContent = file ? file.name + " (" + (file.size / 1048576).toFixed(1) + " MB)" : "";
    input.required = !file;
  }

  input.addEventListener("change", function () { choose(input.files[0] || null); });
  ["dragenter", "dragover"].forEach(function (type) {
    zone.addEventListener(type, function (event) { event.preventDefault(); zone.classList.add("over"); });
  });
  ["dragleave", "drop"].forEach(function (type) {
    zone.addEventListener(type, function (event) { event.preventDefault(); zone.classList.remove("over"); });
  });
  zone.addEventListener("drop", function (event) {
    if (event.dataTransfer.files.length) choose(event.dataTransfer.files[0]);
  });

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    const file = chosen || input.files[0];
    if (!file) { status.textContent = "Choose a model file first."; return; }
    const data = new FormData(form);
    data.set("file", file, file.name);
    const xhr = new XMLHttpRequest();
    xhr.open("POST", form.action);
    xhr.setRequestHeader("Accept", "application/json");
    bar.hidden = false;
    bar.value = 0;
    button.disabled = true;
    status.className = "";
    status.textContent = "Uploading…";
    xhr.upload.addEventListener("progress", function (e) {
      if (e.lengthComputable) {
        bar.value = Math.round((e.loaded / e.total) * 100);
        status.textContent = "Uploading… " + bar.value + "%";
      }
    });
    xhr.addEventListener("load", function () {
      let body = {};
      try { body = JSON.parse(xhr.responseText); } catch (err) { body = {error: "unexpected answer (" + xhr.status + ")"}; }
      if (xhr.status === 201) {
        status.textContent = "Uploaded. Inspecting…";
        window.location.assign(body.url);
      } else {
        button.disabled = false;
        status.className = "flash error";
        status.textContent = body.error || "upload failed (" + xhr.status + ")";
        if (body.url) {
          const link = document.createElement("a");
          link.href = body.url;
          link.textContent = " Open the existing version.";
          status.appendChild(link);
        }
      }
    });
    xhr.addEventListener("error", function () {
      button.disabled = false;
      status.className = "flash error";
      status.textContent = "The connection failed during the upload; nothing was stored. Try again.";
    });
    xhr.send(data);
  });
})();
