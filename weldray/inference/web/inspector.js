// weldray inspector: classify dropped photos through this server's own /predict?explain=true.
"use strict";

const rows = [];          // one per photo: {name, status, class, confidence, needs_review, error, reason}
const tbody = document.querySelector("#results tbody");
const PARALLEL = 2;       // requests in flight at once (the server batches and answers 503 when full)

// With serve.api_key_file the API needs a key: asked for once, kept for this browser tab only.
function authHeaders() {
  const key = sessionStorage.getItem("weldray-api-key");
  return key ? { "x-api-key": key } : {};
}

async function loadModel() {
  const el = document.getElementById("model");
  const form = document.getElementById("keyform");
  try {
    const response = await fetch("metadata", { headers: authHeaders() });
    if (response.status === 401) {
      el.textContent = "this server needs an API key: enter it to classify photos";
      form.hidden = false;
      return;
    }
    form.hidden = true;
    const meta = await response.json();
    el.textContent = `model ${meta.model_version} · ${meta.backbone || "?"} · ${meta.precision} on ` +
      `${meta.provider} · classes ${meta.classes.join(", ")} · review below ${Math.round(meta.review_threshold * 100)} %`;
  } catch (err) {
    el.textContent = `model information unavailable: ${err}`;
  }
}

function cell(tr, content) {
  const td = document.createElement("td");
  if (content instanceof Node) td.appendChild(content); else td.textContent = content ?? "";
  tr.appendChild(td);
  return td;
}

function thumbnail(src, alt) {
  const img = document.createElement("img");
  img.src = src;
  img.alt = alt;
  return img;
}

function render(row) {
  const tr = row.tr;
  tr.replaceChildren();
  cell(tr, thumbnail(row.preview, row.name)).title = row.name;
  cell(tr, row.overlay ? thumbnail(row.overlay, `heatmap of ${row.name}`) : (row.status === "pending" ? "…" : ""));
  const cls = cell(tr, row.class || (row.status === "pending" ? "classifying…" : ""));
  if (row.class) cls.className = `class-${row.class}`;
  cell(tr, row.confidence === undefined ? "" : `${(100 * row.confidence).toFixed(1)} %`);
  const review = cell(tr, row.needs_review === undefined ? "" : (row.needs_review ? "yes" : "no"));
  if (row.needs_review) review.className = "review";
  const note = cell(tr, row.error ? `${row.error}: ${row.reason}` : row.name);
  if (row.error) note.className = "error";
  tr.dataset.status = row.status;
}

function summarise() {
  const done = rows.filter((r) => r.status !== "pending");
  const bad = done.filter((r) => r.class === "bad_weld").length;
  const review = done.filter((r) => r.needs_review).length;
  const failed = done.filter((r) => r.error).length;
  document.getElementById("summary").textContent = rows.length
    ? `${done.length} of ${rows.length} done · ${bad} bad weld · ${review} need review · ${failed} rejected`
    : "";
  document.getElementById("csv").disabled = done.length === 0;
  document.getElementById("clear").disabled = rows.length === 0;
  document.getElementById("results").hidden = rows.length === 0;
}

async function classify(row, file) {
  for (let attempt = 0; attempt < 5; attempt++) {
    let response;
    try {
      response = await fetch("predict?explain=true", {
        method: "POST", body: file,
        headers: { "content-type": file.type || "application/octet-stream", ...authHeaders() },
      });
    } catch (err) {
      Object.assign(row, { status: "error", error: "network", reason: String(err) });
      return;
    }
    if (response.status === 503) {  // the replicas are full: wait as the server asks, then retry
      await new Promise((ok) => setTimeout(ok, 1000 * Number(response.headers.get("retry-after") || 1)));
      continue;
    }
    let body;
    try {
      body = await response.json();
    } catch (err) {
      Object.assign(row, { status: "error", error: `http_${response.status}`, reason: "the server's answer was not JSON" });
      return;
    }
    if (!response.ok) {
      Object.assign(row, { status: "error", error: body.error || `http_${response.status}`, reason: body.reason || "" });
      return;
    }
    Object.assign(row, {
      status: "done", class: body.class, confidence: body.confidence, needs_review: body.needs_review,
      overlay: body.explanation ? `data:image/png;base64,${body.explanation.overlay_png_base64}` : null,
    });
    return;
  }
  Object.assign(row, { status: "error", error: "overloaded", reason: "the server stayed at capacity; try again" });
}

async function addFiles(files) {
  const queue = [];
  for (const file of files) {
    const row = { name: file.name, status: "pending", preview: URL.createObjectURL(file), tr: document.createElement("tr") };
    rows.push(row);
    tbody.appendChild(row.tr);
    render(row);
    queue.push([row, file]);
  }
  summarise();
  const worker = async () => {
    while (queue.length) {
      const [row, file] = queue.shift();
      await classify(row, file);
      render(row);
      summarise();
    }
  };
  await Promise.all(Array.from({ length: PARALLEL }, worker));
}

function csvField(value) {
  const text = value === undefined || value === null ? "" : String(value);
  return /[",\n]/.test(text) ? `"${text.replaceAll('"', '""')}"` : text;
}

function downloadCsv() {
  const header = ["photo", "class", "confidence", "needs_review", "error", "reason"];
  const lines = [header.join(",")].concat(
    rows.filter((r) => r.status !== "pending").map((r) =>
      [r.name, r.class, r.confidence, r.needs_review, r.error, r.reason].map(csvField).join(",")),
  );
  const link = document.createElement("a");
  link.href = URL.createObjectURL(new Blob([lines.join("\n") + "\n"], { type: "text/csv" }));
  link.download = "weldray-results.csv";
  link.id = "csv-link";
  document.body.appendChild(link);
  link.click();
  link.remove();
}

const drop = document.getElementById("drop");
const input = document.getElementById("files");
input.addEventListener("change", () => { addFiles([...input.files]); input.value = ""; });
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); addFiles([...e.dataTransfer.files]); });
document.getElementById("csv").addEventListener("click", downloadCsv);
document.getElementById("clear").addEventListener("click", () => { rows.length = 0; tbody.replaceChildren(); summarise(); });
loadModel();

document.getElementById("keyform").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem("weldray-api-key", document.getElementById("apikey").value.trim());
  loadModel();
});
