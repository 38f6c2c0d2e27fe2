// photolabel web page: predict, train, inspect a model. Plain JS, same-origin API only.
"use strict";

const $ = (id) => document.getElementById(id);
const POLL_MS = 500;
const TOP_K = 5;

// ---------- API helpers ----------

class ApiError extends Error {
  constructor(code, message, status) {
    super(message);
    this.code = code;
    this.status = status;
  }
}

// What the page shows of an error ({code, message}, an ApiError or a string): its message as a sentence, never
// its code. The service words a failed image "SOURCE: cannot fetch SOURCE: why"; the page names SOURCE once, and
// not at all when `shown` (the image's name, already on screen beside the error) is SOURCE.
function errorText(err, shown = "") {
  let text = "";
  if (err && typeof err === "object" && (err.code || err.message)) {
    text = err.message ? String(err.message) : String(err.code).replace(/_/g, " ");
  } else {
    text = String(err ?? "");
  }
  text = text.trim();
  const lead = text.match(/^(\S+): /);
  if (lead && (lead[1] === shown || text.slice(lead[0].length).includes(lead[1]))) {
    text = text.slice(lead[0].length);
  }
  if (shown) text = text.split(shown).join("the image");  // "cannot fetch the image: HTTP 404 Not Found"
  if (!text) return "Something went wrong.";
  // a plain first word starts with a capital; a file name or URL stays as it is
  if (/^[a-z][a-z'-]*(\s|$)/.test(text)) text = text[0].toUpperCase() + text.slice(1);
  return /[.!?)]$/.test(text) ? text : `${text}.`;
}

// The service's token (API_TOKEN), if it asks for one: typed at the top of the page, kept in this tab only.
const TOKEN_KEY = "photolabel.apiToken";
const tokenInput = $("api-token");

function readStoredToken() {
  try {
    return sessionStorage.getItem(TOKEN_KEY) || "";
  } catch {
    return "";  // storage disabled: the field still works for this page
  }
}

tokenInput.value = readStoredToken();
tokenInput.addEventListener("input", () => {
  const token = tokenInput.value.trim();
  try {
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
  } catch {
    // storage disabled: nothing to keep
  }
});

async function api(path, options = {}) {
  const headers = { Accept: "application/json", ...(options.headers || {}) };
  const token = tokenInput.value.trim();
  if (token) headers.Authorization = `Bearer ${token}`;
  let response;
  try {
    response = await fetch(path, { ...options, headers });
  } catch (exc) {
    throw new ApiError("network", `cannot reach the server (${exc.message})`, 0);
  }
  let body = null;
  const text = await response.text();
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = null;
  }
  if (!response.ok) {
    const e = (body && (body.error || body.detail)) || {};
    let message = typeof e === "string" ? e : e.message || text || response.statusText;
    if (response.status === 401) {
      message = `${token ? "The API token was not accepted" : "This needs the API token"}: type it in ` +
        `"API token" at the top of the page. (${message})`;
      tokenInput.focus();
    }
    throw new ApiError((e && e.code) || `http_${response.status}`, message, response.status);
  }
  return body;
}

function showError(box, err) {
  box.textContent = errorText(err);
  box.hidden = false;
}

function clearError(box) {
  box.textContent = "";
  box.hidden = true;
}

// Field names may differ a little between versions of the API: read them defensively.
const modelKey = (m) => m.model_id || m.id || m.model_sha1 || m.job_id || "";
const pct = (p) => `${(100 * p).toFixed(1)}%`;

function labelsOf(m) {
  const labels = m.labels || (m.metrics && m.metrics.validation && m.metrics.validation.labels) || [];
  return Array.isArray(labels) ? labels : Object.keys(labels);
}

function nameOf(value) {
  if (value && typeof value === "object") return value.name || JSON.stringify(value);
  return value == null ? "" : String(value);
}

function accuracyOf(m) {
  const v = m.metrics && m.metrics.validation;
  const candidates = [m.accuracy, m.validation_accuracy, m.validation && m.validation.accuracy, v && v.accuracy];
  const found = candidates.find((a) => typeof a === "number");
  return found === undefined ? null : found;
}

// Scores as [[label, p], ...], best first: accepts {label: p} or [{label, score|probability}].
function rankedScores(scores) {
  let pairs = [];
  if (Array.isArray(scores)) {
    pairs = scores.map((s) => [s.label, Number(s.score ?? s.probability ?? s.p ?? 0)]);
  } else if (scores && typeof scores === "object") {
    pairs = Object.entries(scores).map(([k, v]) => [k, Number(v)]);
  }
  return pairs.sort((a, b) => b[1] - a[1] || String(a[0]).localeCompare(String(b[0])));
}

// ---------- models ----------

const select = $("model-select");
let models = [];

async function loadModels(selectKey) {
  const previous = selectKey || select.value;
  $("models-status").textContent = "";
  try {
    const body = await api("/v1/models");
    models = Array.isArray(body) ? body : body.models || [];
  } catch (err) {
    models = [];
    $("models-status").textContent = `Cannot list models: ${errorText(err)}`;
  }
  select.replaceChildren();
  if (models.length === 0) {
    select.append(new Option("no models yet: train one below", ""));
    select.disabled = true;
  } else {
    select.disabled = false;
    for (const m of models) {
      const key = modelKey(m);
      const labels = labelsOf(m);
      const text = `${key.slice(0, 12)} · ${labels.join(", ")}${m.head ? ` · ${nameOf(m.head)}` : ""}`;
      select.append(new Option(text, key));
    }
    const keys = models.map(modelKey);
    select.value = keys.includes(previous) ? previous : keys.find((k) => previous && k.startsWith(previous)) || keys[0];
  }
  await showModel(select.value);
}

select.addEventListener("change", () => {
  showModel(select.value);
  resetPrediction();
});

// ---------- model section ----------

let modelRequest = 0;

async function showModel(key) {
  const ticket = ++modelRequest;
  clearError($("model-error"));
  if (!key) {
    $("model-details").hidden = true;
    $("model-empty").hidden = false;
    return;
  }
  let m;
  try {
    m = await api(`/v1/models/${encodeURIComponent(key)}`);
  } catch (err) {
    if (ticket !== modelRequest) return;
    $("model-details").hidden = true;
    showError($("model-error"), err);
    return;
  }
  if (ticket !== modelRequest) return;  // a later selection won
  $("model-empty").hidden = true;
  $("model-details").hidden = false;
  $("model-id").textContent = modelKey(m);
  $("model-download").href = `/v1/models/${encodeURIComponent(modelKey(m))}/archive`;
  $("model-labels").textContent = labelsOf(m).join(", ");
  $("model-backbone").textContent = nameOf(m.backbone ?? (m.config && m.config.backbone));
  $("model-head").textContent = nameOf(m.head ?? (m.config && m.config.head));
  const acc = accuracyOf(m);
  $("model-accuracy").textContent = acc === null ? "no validation split" : pct(acc);
  $("model-calibration").textContent = calibrationText(m);
  $("model-unknown").textContent = unknownText(m);
  renderValidation((m.metrics && m.metrics.validation) || m.validation || null, labelsOf(m));
}

// Delete the selected model, once the user has confirmed it.
$("model-delete").addEventListener("click", async () => {
  const key = select.value;
  if (!key) return;
  const labels = (models.find((m) => modelKey(m) === key) || {}).labels || [];
  const named = `${key.slice(0, 12)}${labels.length ? ` (${labels.join(", ")})` : ""}`;
  if (!window.confirm(`Delete model ${named}? Its files are removed from the server; this cannot be undone.`)) {
    return;
  }
  clearError($("model-error"));
  const button = $("model-delete");
  button.disabled = true;
  try {
    await api(`/v1/models/${encodeURIComponent(key)}`, { method: "DELETE" });
    resetPrediction();
    await loadModels("");
  } catch (err) {
    showError($("model-error"), err);
  } finally {
    button.disabled = false;
  }
});

function calibrationText(m) {
  const c = m.calibration;
  if (!c) return "off";
  const fitted = (m.metrics && m.metrics.calibration) || {};
  if (typeof fitted.log_loss_before !== "number") return "none fitted (no validation images)";
  return `temperature ${c.temperature}: validation log-loss ${fitted.log_loss_before.toFixed(3)} → ` +
    `${fitted.log_loss_after.toFixed(3)}`;
}

function unknownText(m) {
  const u = m.unknown;
  if (!u) return "off";
  const v = m.metrics && m.metrics.validation && m.metrics.validation.unknown;
  const sure = u.confidence_threshold > 0 ? `, or the model is under ${pct(u.confidence_threshold)} sure` : "";
  const rate = v && typeof v.rate === "number" ? `; answered for ${pct(v.rate)} of the validation images` : "";
  return `on: "unknown" when an image is unlike every label's training images${sure}${rate}`;
}

function cell(tag, text, attrs = {}) {
  const el = document.createElement(tag);
  el.textContent = text;
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  return el;
}

function renderValidation(v, modelLabels) {
  const box = $("model-validation");
  if (!v || !v.confusion_matrix) {
    box.hidden = true;
    return;
  }
  box.hidden = false;
  const labels = v.labels || modelLabels;
  const fmt = (x) => (typeof x === "number" ? x.toFixed(3) : "–");

  const tbody = $("per-class").tBodies[0];
  tbody.replaceChildren();
  for (const label of labels) {
    const r = (v.per_class && v.per_class[label]) || {};
    const tr = document.createElement("tr");
    tr.append(cell("th", label, { scope: "row" }), cell("td", fmt(r.precision)), cell("td", fmt(r.recall)),
      cell("td", fmt(r.f1)), cell("td", r.support ?? "–"));
    tbody.append(tr);
  }

  const table = $("confusion");
  table.replaceChildren();
  const head = document.createElement("tr");
  head.append(cell("th", "true \\ predicted", { scope: "col" }));
  labels.forEach((l) => head.append(cell("th", l, { scope: "col" })));
  const thead = document.createElement("thead");
  thead.append(head);
  const body = document.createElement("tbody");
  const max = Math.max(1, ...v.confusion_matrix.flat());
  v.confusion_matrix.forEach((row, i) => {
    const tr = document.createElement("tr");
    tr.append(cell("th", labels[i] ?? String(i), { scope: "row" }));
    row.forEach((n, j) => {
      const td = cell("td", String(n), { "data-count": String(n) });
      const alpha = n / max;
      const hue = i === j ? "34, 139, 84" : "200, 60, 50";  // green on the diagonal, red off it
      td.style.backgroundColor = n ? `rgba(${hue}, ${(0.12 + 0.78 * alpha).toFixed(2)})` : "";
      if (alpha > 0.55) td.classList.add("dark");
      td.title = `true ${labels[i]}, predicted ${labels[j]}: ${n}`;
      tr.append(td);
    });
    body.append(tr);
  });
  table.append(thead, body);
}

// ---------- predict ----------

const fileInput = $("predict-file");
const drop = $("drop-zone");
const preview = $("preview");
let previewUrl = null;
let predictRequest = 0;

function resetPrediction() {
  $("predict-output").hidden = true;
  $("predict-cards").hidden = true;
  $("predict-cards").replaceChildren();
  clearError($("predict-error"));
}

function setPreview(file) {
  if (previewUrl) URL.revokeObjectURL(previewUrl);
  previewUrl = null;
  preview.hidden = true;
  preview.removeAttribute("src");
  if (file && file.type.startsWith("image/")) {
    previewUrl = URL.createObjectURL(file);
    preview.src = previewUrl;
  }
}
preview.addEventListener("load", () => { preview.hidden = false; });
preview.addEventListener("error", () => { preview.hidden = true; });

async function predict(file) {
  const ticket = ++predictRequest;
  resetPrediction();
  setPreview(file);
  const key = select.value;
  if (!key) {
    showError($("predict-error"), "No model selected: train one first.");
    return;
  }
  $("predict-status").textContent = `Predicting ${file.name}…`;
  $("predict-result").setAttribute("aria-busy", "true");
  const form = new FormData();
  form.append("images", file, file.name);
  try {
    const body = await api(`/v1/models/${encodeURIComponent(key)}/predict`, { method: "POST", body: form });
    if (ticket !== predictRequest) return;
    const p = (body.predictions || [body])[0];
    if (!p) throw new ApiError("empty", "the server returned no prediction", 200);
    if (p.error) throw new ApiError(p.error.code, p.error.message, 200);
    renderPrediction(p, file.name);
  } catch (err) {
    if (ticket !== predictRequest) return;
    $("predict-status").textContent = `No prediction for ${file.name}.`;
    showError($("predict-error"), err);
  } finally {
    if (ticket === predictRequest) $("predict-result").setAttribute("aria-busy", "false");
  }
}

// Several images at once: one request, one result card per image (in the order they were given).
async function predictMany(files) {
  const ticket = ++predictRequest;
  resetPrediction();
  setPreview(null);
  const key = select.value;
  if (!key) {
    showError($("predict-error"), "No model selected: train one first.");
    return;
  }
  $("predict-status").textContent = `Predicting ${files.length} images…`;
  $("predict-result").setAttribute("aria-busy", "true");
  const form = new FormData();
  for (const file of files) form.append("images", file, file.name);
  try {
    const body = await api(`/v1/models/${encodeURIComponent(key)}/predict`, { method: "POST", body: form });
    if (ticket !== predictRequest) return;
    renderCards(body.predictions || [], files);
    $("predict-status").textContent = `${files.length} images`;
  } catch (err) {
    if (ticket !== predictRequest) return;
    $("predict-status").textContent = `No predictions for these ${files.length} images.`;
    showError($("predict-error"), err);
  } finally {
    if (ticket === predictRequest) $("predict-result").setAttribute("aria-busy", "false");
  }
}

function renderCards(predictions, files) {
  const list = $("predict-cards");
  list.replaceChildren();
  files.forEach((file, i) => {
    const p = predictions[i];
    const card = document.createElement("li");
    card.className = "result-card";
    card.setAttribute("data-testid", "predict-card");
    card.append(cell("h3", (p && p.image) || file.name));
    if (!p || p.error) {
      const error = p && p.error ? p.error : { code: "empty", message: "the server returned no prediction" };
      card.append(cell("p", errorText(error, (p && p.image) || file.name),
        { class: "error", "data-testid": "predict-card-error" }));
    } else {
      const unknown = p.unknown === true;
      const label = cell("strong", unknown ? "unknown" : p.label, { "data-testid": "predict-card-label" });
      if (unknown) label.classList.add("unknown");
      const line = document.createElement("p");
      line.append("Label: ", label);
      const top = rankedScores(p.scores).slice(0, 3).map(([l, prob]) => `${l} ${pct(prob)}`).join(" · ");
      card.append(line, cell("p", top, { class: "muted", "data-testid": "predict-card-scores" }));
    }
    list.append(card);
  });
  list.hidden = false;
}

function predictFiles(files) {
  if (files.length === 1) predict(files[0]);
  else if (files.length > 1) predictMany(files);
}

function renderPrediction(p, name) {
  $("predict-status").textContent = name;
  // "unknown": the image is unlike the model's training images, or the model is not confident enough.
  // The label then reads "unknown"; the scores are still shown, with the best guess named.
  const unknown = p.unknown === true;
  const labelBox = $("predict-label");
  labelBox.textContent = unknown ? "unknown" : p.label;
  labelBox.classList.toggle("unknown", unknown);
  const note = $("predict-unknown");
  note.hidden = !unknown;
  note.textContent = unknown
    ? `This image is unlike the images the model was trained on, or the model is not confident enough. ` +
      `Best guess: ${p.best} (${pct((p.scores || {})[p.best] || 0)}).`
    : "";
  $("predict-sha256").textContent = p.sha256 || "";
  const list = $("predict-scores");
  list.replaceChildren();
  for (const [label, prob] of rankedScores(p.scores).slice(0, TOP_K)) {
    const li = document.createElement("li");
    li.dataset.label = label;
    li.dataset.probability = String(prob);
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.setAttribute("aria-hidden", "true");
    const fill = document.createElement("span");
    fill.style.width = `${Math.max(0, Math.min(1, prob)) * 100}%`;
    bar.append(fill);
    li.append(cell("span", label, { class: "name" }), bar, cell("span", pct(prob), { class: "value" }));
    list.append(li);
  }
  $("predict-output").hidden = false;
}

fileInput.addEventListener("change", () => {
  predictFiles([...fileInput.files]);
  fileInput.value = "";  // choosing the same files again predicts again
});
for (const type of ["dragenter", "dragover"]) {
  drop.addEventListener(type, (e) => { e.preventDefault(); drop.classList.add("over"); });
}
for (const type of ["dragleave", "drop"]) {
  drop.addEventListener(type, () => drop.classList.remove("over"));
}
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  predictFiles(e.dataTransfer ? [...e.dataTransfer.files] : []);
});

// ---------- train ----------

const trainForm = $("train-form");

function showJob(job) {
  $("train-job").hidden = false;
  $("train-job-id").textContent = job.job_id || "";
  $("train-status").textContent = (job.status || "").replace(/_/g, " ");
  let progress = typeof job.progress === "number" ? job.progress : 0;
  if (progress > 1) progress /= 100;  // tolerate a percentage
  if (job.status === "ready") progress = 1;
  const percent = Math.round(progress * 100);
  $("train-progress").value = percent;
  const stage = job.stage && job.stage !== job.status ? `· ${job.stage.replace(/_/g, " ")} ` : "";
  $("train-stage").textContent = `${stage}· ${percent}%`;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function followJob(jobId, first) {
  let job = first;
  while (!job || !["ready", "error", "failed"].includes(job.status)) {
    await sleep(POLL_MS);
    job = await api(`/v1/jobs/${encodeURIComponent(jobId)}`);
    showJob(job);
  }
  return job;
}

trainForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  clearError($("train-error"));
  const form = new FormData(trainForm);
  for (const [key, value] of [...form.entries()]) {
    if (typeof value === "string" && value.trim() === "") form.delete(key);  // let the server default it
  }
  const button = $("train-submit");
  button.disabled = true;
  try {
    const started = await api("/v1/train", { method: "POST", body: form });
    showJob({ status: "queued", ...started });
    const done = await followJob(started.job_id, ["ready", "error"].includes(started.status) ? started : null);
    if (done.status !== "ready") {
      showError($("train-error"), done.error || "training failed");
      return;
    }
    await loadModels(done.model_id || started.model_id || started.model_sha1);
    resetPrediction();
  } catch (err) {
    showError($("train-error"), err);
  } finally {
    button.disabled = false;
  }
});

loadModels();
