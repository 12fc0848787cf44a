// openrknn GUI: plain DOM code, no framework. Every text from the server goes through textContent.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));

const ui = {
  schema: null,
  state: {},
  configOk: false,
  validateTimer: null,
  validateSeq: 0,
  job: null,
  inferred: false,
  layers: null,
  marks: null, // layers marked to keep in float (a Set), kept across sorting and filtering
  layerSort: null, // {key, dir}; null = graph order until accuracy is measured, then worst cosine first
  expanded: new Set(), // layers whose parts are shown
  uploading: 0, // calibration uploads in flight: Build waits for them
  formTimer: null,
  restored: false,
};

// ---------------------------------------------------------------- helpers

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

async function api(method, url, body, raw) {
  const opts = { method, headers: {}, credentials: "same-origin" };
  if (raw !== undefined) {
    opts.body = raw;
    opts.headers["Content-Type"] = "application/octet-stream";
  } else if (body !== undefined) {
    opts.body = JSON.stringify(body);
    opts.headers["Content-Type"] = "application/json";
  }
  const res = await fetch(url, opts);
  let data = null;
  try { data = await res.json(); } catch (e) { data = null; }
  if (!res.ok) {
    const err = new Error((data && data.error) || `${res.status} ${res.statusText}`);
    err.status = res.status;
    err.data = data;
    throw err;
  }
  return data;
}

function showMsg(el, text, isError) {
  if (!text) { el.hidden = true; el.textContent = ""; return; }
  el.hidden = false;
  el.textContent = text;
  el.classList.toggle("msg-error", !!isError);
}

// Decimal units (1 MB = 10^6 bytes), the convention of the build log and the command line, so one file shows one
// figure everywhere.
function fmtBytes(n) {
  if (n === null || n === undefined) return "—";
  if (n < 1e3) return `${n} B`;
  if (n < 1e6) return `${(n / 1e3).toFixed(1)} kB`;
  if (n < 1e9) return `${(n / 1e6).toFixed(2)} MB`;
  return `${(n / 1e9).toFixed(2)} GB`;
}

// Long identifiers (asymmetric_quantized-u8) may wrap only after '_' or '-' (or the given split), never mid-word.
function breakable(text, after = /(?<=[_\-])/) {
  const parts = String(text).split(after);
  const out = [];
  parts.forEach((p, i) => { if (i) out.push(h("wbr")); out.push(p); });
  return out;
}

function fmtNum(v, digits = 4) {
  if (v === null || v === undefined) return "—";
  if (typeof v !== "number") return String(v);
  if (Number.isInteger(v)) return String(v);
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-3 || a >= 1e5)) return v.toExponential(2);
  return v.toFixed(digits).replace(/\.?0+$/, "");
}

const fmtShape = (s) => (Array.isArray(s) ? `[${s.join(", ")}]` : "—");
const fmtList = (s) => (Array.isArray(s) ? s.map((v) => fmtNum(v, 3)).join(" ") : "—");

function fillTable(table, rows, emptyText) {
  const tbody = $("tbody", table);
  tbody.replaceChildren();
  if (!rows.length) {
    const cols = $$("thead th", table).length;
    tbody.append(h("tr", { class: "empty" }, h("td", { colspan: cols, text: emptyText || "Nothing to show." })));
    return;
  }
  for (const r of rows) tbody.append(r);
}

function td(text, cls) { return h("td", { class: cls, text: text === undefined ? "" : String(text) }); }

// ---------------------------------------------------------------- state

function applyState(s) {
  ui.state = s || {};
  const firstLoad = !ui.restored;
  if (firstLoad) { // the page was (re)loaded: show what the session kept
    ui.restored = true;
    if (ui.state.form) restoreForm(ui.state.form);
  }
  renderModel(ui.state.model);
  renderDataset(ui.state.dataset);
  if (ui.state.result) renderResult(ui.state.result);
  if (firstLoad && ui.state.inference) renderInference(ui.state.inference);
  ui.inferred = !!ui.state.inference;
  if (ui.state.job && ui.job === null) { // a build still running when the page was reloaded: follow it again
    resetProgress();
    followJob(ui.state.job);
  }
  updateControls();
}

// ---------------------------------------------------------------- the form, kept by the server

function collectForm() {
  const out = $("#output-name");
  return {
    config: collectConfig(),
    do_quantization: $("#do-quantization").checked,
    input_size: $("#input-size").value,
    rknn_batch_size: $("#rknn-batch").value,
    output_name: out.value,
    output_auto: out.dataset.auto === "1",
    infer: { feed_order: $("#infer-feed").value, resize: $("#infer-resize").value, score_thr: $("#infer-score").value,
      nms_thr: $("#infer-nms").value, class_names: $("#infer-names").value },
  };
}

function restoreForm(f) {
  for (const [key, value] of Object.entries(f.config || {})) {
    const input = $(`#config-form [name="${CSS.escape(key)}"]`);
    if (!input) continue;
    if (input.type === "checkbox") input.checked = !!value;
    else input.value = value === null || value === undefined ? "" : String(value);
  }
  filterDtypes();
  if (f.config && f.config.quantized_dtype !== undefined) $("#cfg-quantized_dtype").value = f.config.quantized_dtype;
  $("#do-quantization").checked = !!f.do_quantization;
  syncQuantSection();
  $("#input-size").value = f.input_size || "";
  $("#rknn-batch").value = f.rknn_batch_size || "";
  const out = $("#output-name");
  out.value = f.output_name || "";
  out.dataset.auto = f.output_auto === false ? "0" : "1";
  const inf = f.infer || {};
  for (const [id, key] of [["#infer-feed", "feed_order"], ["#infer-resize", "resize"], ["#infer-score", "score_thr"],
    ["#infer-nms", "nms_thr"], ["#infer-names", "class_names"]]) {
    if (inf[key] !== undefined && inf[key] !== null) $(id).value = inf[key];
  }
}

function saveFormSoon() {
  clearTimeout(ui.formTimer);
  ui.formTimer = setTimeout(saveForm, 250);
}

async function saveForm() {
  clearTimeout(ui.formTimer);
  try { await api("POST", "/api/form", { form: collectForm() }); } catch (e) { console.warn("form not saved", e); }
}

async function refreshState() {
  try { applyState(await api("GET", "/api/state")); } catch (e) { console.error(e); }
}

function updateControls() {
  const s = ui.state;
  const m = s.model;
  const isRknn = m && m.framework === "rknn";
  const building = ui.job !== null;
  const uploading = ui.uploading > 0 || s.uploading > 0;
  const build = $("#build-btn");
  build.disabled = !m || isRknn || !ui.configOk || building || uploading;
  build.textContent = building ? "Building…" : "Build";
  build.title = !m ? "Pick a model first" : isRknn ? "An .rknn model is already built" :
    !ui.configOk ? "Fix the configuration first" : uploading ? "Calibration images are still uploading" : "";
  $("#infer-btn").disabled = !s.rknn || !$("#infer-file").files.length;
  const status = $("#top-status");
  status.replaceChildren();
  if (!m) status.append("No model loaded");
  else {
    status.append(h("strong", { text: m.name }), ` · ${m.framework.toUpperCase()}`);
    if (s.rknn) status.append(" → ", h("strong", { text: s.rknn }));
    if (building) status.append(" · building…");
  }
  setStep("model", m ? "done" : "");
  setStep("config", ui.configOk ? "done" : "");
  setStep("calibration", s.dataset ? "done" : "");
  setStep("build", s.rknn ? "done" : building ? "active" : "");
  setStep("inference", ui.inferred ? "done" : "");
  setStep("layers", ui.layers && ui.layers.rows && ui.layers.rows.length ? "done" : "");
  setStep("perf", s.result && (s.result.perf || s.result.memory) ? "done" : "");
  if (ui.layers) updateHybridButton();
  $("#accuracy-btn").disabled = !(ui.layers && ui.layers.accuracy && ui.layers.accuracy.available && ui.inferred);
}

function setStep(name, mode) {
  const el = $(`.step[data-step="${name}"]`);
  el.classList.toggle("done", mode === "done");
  el.classList.toggle("active", mode === "active");
  el.classList.toggle("failed", mode === "failed");
}

// ---------------------------------------------------------------- model

function renderModel(m) {
  const info = $("#model-info");
  if (!m) { info.hidden = true; return; }
  info.hidden = false;
  $("#model-framework").textContent = m.framework;
  $("#model-name").textContent = m.name;
  const meta = [fmtBytes(m.size_bytes)];
  if (m.nodes) meta.push(`${m.nodes} nodes`);
  if (m.opset) meta.push(`opset ${m.opset}`);
  if (m.source === "path" && m.path) meta.push(m.path);
  $("#model-meta").textContent = meta.join(" · ");
  const io = (list) => (list || []).map((x) => h("tr", {}, td(x.name, "mono"), td(fmtShape(x.shape), "mono")));
  const unknown = m.framework === "pytorch" ? "TorchScript does not record shapes." : "—";
  fillTable($("#model-inputs"), io(m.inputs), unknown);
  fillTable($("#model-outputs"), io(m.outputs), m.framework === "pytorch" ? "Known after the build." : "—");
  $("#input-size-field").hidden = !m.needs_input_size;
  const out = $("#output-name");
  if (!out.value || out.dataset.auto === "1") {
    out.value = m.name.replace(/\.[^.]+$/, "") + ".rknn";
    out.dataset.auto = "1";
  }
  if (m.framework === "rknn") {
    showMsg($("#model-msg"), "This .rknn model is already built: run it in the inference panel or download it below.");
  }
}

async function pickModel(request, busyText) {
  showMsg($("#model-msg"), busyText);
  let s;
  try {
    s = await request();
  } catch (e) {
    showMsg($("#model-msg"), e.message, true);
    return;
  }
  $("#output-name").dataset.auto = "1";
  $("#output-name").value = "";
  clearResult();
  clearInference();
  applyState(s);
  if (s.model.framework !== "rknn") showMsg($("#model-msg"), "");
  if (s.model.framework === "rknn") afterRknnReady();
  else loadLayers(false);
  validateConfig(); // the checks against the model (channel counts, input sizes) change with it
  saveFormSoon();
}

function pickModelFile(file) {
  if (!file) return;
  pickModel(() => api("POST", `/api/model/upload?filename=${encodeURIComponent(file.name)}`, undefined, file),
    `Uploading ${file.name} (${fmtBytes(file.size)})…`);
}

function pickModelPath(path) {
  pickModel(() => api("POST", "/api/model/path", { path }), `Opening ${path}…`);
}

function afterRknnReady() {
  const summary = ui.state.model && ui.state.model.summary;
  if (summary) renderResult({ rknn: ui.state.rknn, size_bytes: summary.size_bytes, summary, timings: {}, perf: null,
    memory: null, perf_note: "perf/memory estimates are computed when the GUI builds the model",
    memory_note: "perf/memory estimates are computed when the GUI builds the model" });
  loadLayers(false);
}

// ---------------------------------------------------------------- config

function collectConfig() {
  const cfg = {};
  for (const field of $$("#config-form .field[data-key]")) {
    const key = field.dataset.key;
    const input = $(`[name="${key}"]`, field);
    cfg[key] = input.type === "checkbox" ? input.checked : input.value;
  }
  return cfg;
}

function filterDtypes() {
  const target = $("#cfg-target_platform").value;
  const gen = ((ui.schema && ui.schema.generations[target]) || "").toUpperCase();
  const select = $("#cfg-quantized_dtype");
  for (const opt of $$("option", select)) {
    const group = opt.dataset.group || "";
    const ok = group === "" || group === gen;
    opt.hidden = !ok;
    opt.disabled = !ok;
  }
  for (const og of $$("optgroup", select)) og.hidden = og.label !== gen;
  if (select.selectedOptions[0] && select.selectedOptions[0].disabled) select.value = "";
  const def = ui.schema && ui.schema.default_dtype[gen.toLowerCase()];
  if (def) select.options[0].textContent = `default for ${target} (${def})`;
}

function clearFieldErrors() {
  for (const f of $$(".field.invalid[data-key]")) {
    f.classList.remove("invalid");
    $(".field-error", f).hidden = true;
  }
}

function markFieldError(key, message) {
  clearFieldErrors();
  const field = $(`.field[data-key="${CSS.escape(key || "")}"]`);
  if (!field) return false;
  field.classList.add("invalid");
  const p = $(".field-error", field);
  p.textContent = message;
  p.hidden = false;
  return true;
}

function scheduleValidate() {
  clearTimeout(ui.validateTimer);
  ui.validateTimer = setTimeout(validateConfig, 220);
}

async function validateConfig() {
  const seq = ++ui.validateSeq;
  const status = $("#config-status");
  try {
    const r = await api("POST", "/api/validate", { config: collectConfig(), input_size: $("#input-size").value });
    if (seq !== ui.validateSeq) return;
    if (r.ok) {
      ui.configOk = true;
      clearFieldErrors();
      const c = r.config;
      const gen = ui.schema ? ui.schema.generations[c.target_platform[0]] : "";
      status.dataset.state = "ok";
      status.textContent = `Configuration valid · ${c.target_platform.join(", ")} (${(gen || "").toUpperCase()}) · ` +
        `${c.quantized_dtype} · ${c.quantized_algorithm} · per-${c.quantized_method} · optimization level ` +
        `${c.optimization_level}`;
    } else {
      ui.configOk = false;
      markFieldError(r.key, r.message);
      status.dataset.state = "error";
      status.textContent = r.message;
    }
  } catch (e) {
    ui.configOk = false;
    status.dataset.state = "error";
    status.textContent = e.message;
  }
  updateControls();
}

function syncQuantSection() {
  const on = $("#do-quantization").checked;
  $('.cfg-section[data-section="quant"]').classList.toggle("dimmed", !on);
}

// ---------------------------------------------------------------- calibration

function renderDataset(d) {
  const box = $("#dataset-status");
  if (!d) { box.hidden = true; return; }
  box.hidden = false;
  $("#dataset-count").textContent = `${d.count} sample${d.count === 1 ? "" : "s"}`;
  const where = d.source === "upload" ? "uploaded to this session" : d.path;
  const kind = d.kind === "folder" ? "folder" : "dataset.txt";
  $("#dataset-desc").textContent = `${kind} · ${where} · e.g. ${(d.examples || []).slice(0, 3).join(", ")}`;
}

async function pickDatasetPath(path) {
  showMsg($("#dataset-msg"), `Reading ${path}…`);
  try {
    applyState(await api("POST", "/api/dataset/path", { path }));
    $("#do-quantization").checked = true;
    syncQuantSection();
    saveFormSoon();
    showMsg($("#dataset-msg"), "");
  } catch (e) {
    showMsg($("#dataset-msg"), e.message, true);
  }
}

async function uploadDataset(files) {
  let done = 0;
  ui.uploading += files.length; // Build stays disabled until every file is in
  updateControls();
  try {
    for (const f of files) {
      showMsg($("#dataset-msg"), `Uploading ${f.name} (${done + 1}/${files.length})…`);
      try {
        applyState(await api("POST", `/api/dataset/upload?filename=${encodeURIComponent(f.name)}`, undefined, f));
      } finally {
        ui.uploading -= 1;
      }
      done += 1;
    }
    $("#do-quantization").checked = true;
    syncQuantSection();
    saveFormSoon();
    showMsg($("#dataset-msg"), `${done} image${done === 1 ? "" : "s"} uploaded.`);
  } catch (e) {
    ui.uploading -= files.length - done - 1; // the files after the failed one are not sent
    showMsg($("#dataset-msg"), e.message, true);
  }
  updateControls();
}

// ---------------------------------------------------------------- build

function resetProgress() {
  $("#build-progress").hidden = false;
  showMsg($("#build-error"), "");
  $("#build-log").replaceChildren();
  for (const li of $$("#stages li")) li.className = "";
  const fill = $("#progress-fill");
  fill.className = "progress-fill";
  fill.style.width = "0%";
  $("#progress-text").textContent = "Queued…";
  $("#progress-time").textContent = "";
}

function setStage(index, total, label) {
  $$("#stages li").forEach((li, i) => {
    li.classList.toggle("done", i < index);
    li.classList.toggle("active", i === index);
  });
  ui.stageIndex = index;
  ui.stageTotal = total;
  $("#progress-fill").style.width = `${Math.round((100 * index) / total)}%`;
  $("#progress-text").textContent = `${label}…`;
}

function onProgress(bars) {
  if (ui.stageIndex === undefined || !bars.length) return;
  const b = bars[bars.length - 1];
  const frac = b.total ? Math.min(1, b.n / b.total) : 0;
  $("#progress-fill").style.width = `${Math.round((100 * (ui.stageIndex + frac)) / ui.stageTotal)}%`;
  const stage = $$("#stages li")[ui.stageIndex];
  $("#progress-text").textContent = `${stage ? stage.textContent : ""} · ${b.desc || "working"} ${b.n}/${b.total}`;
}

function appendLog(e) {
  const log = $("#build-log");
  const stick = log.scrollTop + log.clientHeight >= log.scrollHeight - 8;
  log.append(h("div", { class: `log-line ${e.level}` },
    h("span", { class: "t", text: e.t.toFixed(2).padStart(6, " ") }),
    h("span", { class: "lvl", text: e.level[0] }),
    h("span", { class: "src", text: e.logger.replace(/^openrknn\.?/, "") || "openrknn" }),
    e.message));
  if (stick) log.scrollTop = log.scrollHeight;
}

function startBuild() {
  const f = collectForm();
  saveForm();
  submitJob("/api/build", { config: f.config, input_size: f.input_size, do_quantization: f.do_quantization,
    rknn_batch_size: f.rknn_batch_size, output_name: f.output_name, keep_float: [] });
}

// The rebuild reuses the settings the current model was built with (the server keeps them), not the form.
function startRebuild(keepFloat) {
  submitJob("/api/rebuild", { keep_float: keepFloat });
}

async function submitJob(url, body) {
  if (!ui.state.model) return;
  resetProgress();
  clearResult();
  let r;
  try {
    r = await api("POST", url, body);
  } catch (e) {
    $("#build-progress").hidden = true;
    if (e.data && e.data.key && markFieldError(e.data.key, e.message)) {
      $("#sec-config").scrollIntoView();
    }
    showMsg($("#build-error"), e.message, true);
    return;
  }
  followJob(r.job_id);
}

function followJob(jobId) {
  ui.job = jobId;
  const started = Date.now();
  ui.timer = setInterval(() => {
    $("#progress-time").textContent = `${((Date.now() - started) / 1000).toFixed(1)} s`;
  }, 200);
  updateControls();
  const es = new EventSource(`/api/jobs/${encodeURIComponent(jobId)}/events`);
  const data = (ev) => JSON.parse(ev.data);
  es.addEventListener("stage", (ev) => { const d = data(ev); setStage(d.index, d.total, d.name); });
  es.addEventListener("log", (ev) => appendLog(data(ev)));
  es.addEventListener("progress", (ev) => onProgress(data(ev).bars));
  es.addEventListener("failure", (ev) => {
    const d = data(ev);
    showMsg($("#build-error"), d.message, true);
    const active = $("#stages li.active");
    if (active) { active.classList.remove("active"); active.classList.add("failed"); }
    $("#progress-fill").classList.add("failed");
    $("#progress-text").textContent = "Build failed";
  });
  es.addEventListener("done", (ev) => {
    const d = data(ev);
    for (const li of $$("#stages li")) { li.className = "done"; }
    const fill = $("#progress-fill");
    fill.style.width = "100%";
    fill.classList.add("done");
    $("#progress-text").textContent = `Done · ${d.result.rknn}`;
    renderResult(d.result);
    clearInference(); // it showed the previous model's outputs
    ui.layerSort = null;
  });
  es.addEventListener("state", (ev) => {
    const d = data(ev);
    if (d.state === "done" || d.state === "failed") {
      es.close();
      clearInterval(ui.timer);
      ui.job = null;
      refreshState().then(() => loadLayers(false));
    }
  });
}

function clearResult() {
  $("#build-result").hidden = true;
  renderPerf(null, "Build a model to see its estimate.");
  renderMemory(null, "Build a model to see its memory plan.");
}

function kv(k, v) { return h("div", { class: "kv" }, h("div", { class: "k", text: k }), h("div", { class: "v" }, v)); }

// the tensor an input is first quantized at and the values its levels span (what `openrknn info` prints): an image
// input's covers every pixel 0..255, whatever the calibration images held
function firstPoint(p, quantized) {
  if (!p) return quantized ? "—" : "float";
  return `${p.tensor}: ${p.dtype}, scale ${fmtNum(p.scale, 6)}, zero point ${p.zero_point}; ` +
    `levels span [${fmtNum(p.range[0], 4)}, ${fmtNum(p.range[1], 4)}]`;
}

function renderResult(r) {
  if (!r || !r.summary) return;
  const s = r.summary;
  $("#build-result").hidden = false;
  $("#result-name").textContent = r.rknn;
  const link = $("#download-link");
  link.href = `/api/download/${encodeURIComponent(r.rknn)}`;
  link.setAttribute("download", r.rknn);
  const q = s.quantization;
  const precision = q ? `${q.dtype} · ${q.algorithm} · per-${q.method}` : "float (fp16 on the NPU)";
  $("#result-meta").textContent = `${(s.target_platform || []).join(", ")} · ${precision}${s.created_utc ? ` · created ${s.created_utc}` : ""}`;
  const t = r.timings || {};
  const kvs = [
    kv("Target", (s.target_platform || []).join(", ")),
    kv("Precision", q ? breakable(q.dtype) : "float"),
    kv("File size", fmtBytes(r.size_bytes || s.size_bytes)),
    kv("Build time", t.total_s !== undefined ? `${t.total_s.toFixed(2)} s` : "—"),
    kv("Inputs / outputs", `${(s.inputs || []).length} / ${(s.outputs || []).length}`),
  ];
  if (q) kvs.push(kv("Quantized tensors", String(q.quantized_tensors)));
  if (r.keep_float && r.keep_float.length) kvs.push(kv("Kept in float", `${r.keep_float.length} layer(s)`));
  $("#result-kv").replaceChildren(...kvs);
  fillTable($("#result-inputs"), (s.inputs || []).map((i) => {
    const pre = [];
    if (i.reorder_channel) pre.push(`reorder ${i.reorder_channel.join(" ")}`);
    if (i.mean) pre.push(`mean ${fmtList(i.mean)}`);
    if (i.std) pre.push(`std ${fmtList(i.std)}`);
    return h("tr", {}, td(i.name, "mono"), td(`${fmtShape(i.shape)} ${i.dtype || ""} ${(i.layout || "").toUpperCase()}`, "mono"),
      td(pre.join(" · ") || "none", "mono"),
      h("td", { class: "mono" }, ...breakable(firstPoint(i.first_point, q), /(?<=[_\-\/])/)));  // a path-like tensor name
  }));
  fillTable($("#result-outputs"), (s.outputs || []).map((o) =>
    h("tr", {}, td(o.name, "mono"), td(fmtShape(o.shape), "mono"), td(o.dtype, "mono"))));
  renderPerf(r.perf, r.perf_note);
  renderMemory(r.memory, r.memory_note);
  updateControls();
}

// ---------------------------------------------------------------- performance and memory

function bars(rows, unit) {
  const max = Math.max(...rows.map((r) => r.value), 1e-12);
  return rows.map((r) => {
    const fill = h("div", { class: "bar-fill" });
    fill.style.width = `${Math.max(1, (100 * r.value) / max)}%`;
    return h("div", { class: "bar-row" }, h("div", { class: "bar-name", title: r.name, text: r.name }),
      h("div", { class: "bar-track" }, fill), h("div", { class: "bar-val", text: r.label || `${fmtNum(r.value, 1)} ${unit}` }));
  });
}

function renderPerf(perf, note) {
  const box = $("#perf-chart");
  if (!perf) {
    box.replaceChildren(h("p", { class: "empty-note", text: note || "No performance estimate." }));
    return;
  }
  const est = perf.npu_estimate || {};
  const host = perf.host_measured;
  const totals = [kv("NPU estimate", est.total_us !== undefined ? `${(est.total_us / 1000).toFixed(2)} ms` : "—"),
    kv("FPS (est.)", fmtNum(est.fps, 1)), kv("GMAC", fmtNum(est.gmacs, 3))];
  // the float tail (output Sigmoids from int8 logits...) runs on the board's CPU after the NPU, apart from its time
  if (est.tail_layers) totals.push(kv("Then board CPU", `${(est.tail_us / 1000).toFixed(3)} ms`));
  if (host) totals.push(kv("This host", `${(host.total_us / 1000).toFixed(2)} ms`));
  const rows = (perf.top_op_types || []).map((t) => ({ name: t.op_type, value: t.time_us,
    label: `${fmtNum(t.time_us, 1)} µs · ${(100 * t.share).toFixed(0)}%` }));
  const children = [h("div", { class: "chart-total" }, ...totals), ...bars(rows, "µs")];
  if (perf.layers && perf.layers.length) {
    // in the user's layer names: the parts of a layer the quantizer split count as that layer (the layer table's
    // folding, once it is loaded)
    const groupOf = new Map();
    for (const r of (ui.layers && ui.layers.rows) || []) for (const p of r.parts || []) groupOf.set(p.name, r.name);
    const total = new Map();
    for (const l of perf.layers) {
      if (l.unit === "free" || l.unit === "fused") continue;
      const name = groupOf.get(l.name) || l.name;
      total.set(name, (total.get(name) || 0) + l.npu_us);
    }
    const slow = [...total].sort((a, b) => b[1] - a[1]).slice(0, 8)
      .map(([name, us]) => ({ name, value: us, label: `${fmtNum(us, 1)} µs` }));
    if (slow.length) children.push(h("h3", { text: "Slowest layers" }), ...bars(slow, "µs"));
  }
  box.replaceChildren(...children);
}

function renderMemory(mem, note) {
  const box = $("#mem-chart");
  if (!mem) {
    box.replaceChildren(h("p", { class: "empty-note", text: note || "No memory estimate." }));
    return;
  }
  const part = (k) => (mem[k] && typeof mem[k].total === "number" ? mem[k].total : 0);
  const weights = part("weight") + ((mem.weight && mem.weight.quant_param_bytes) || 0);
  const parts = [
    { name: "Weights", value: weights, cls: "seg-w" },
    { name: "Internal (activations)", value: part("internal"), cls: "seg-i" },
    { name: "Input buffers", value: part("input"), cls: "seg-in" },
    { name: "Output buffers", value: part("output"), cls: "seg-out" },
  ];
  const total = typeof mem.total === "number" ? mem.total : parts.reduce((a, p) => a + p.value, 0);
  const totals = [kv("Total (est.)", fmtBytes(total))];
  const chip = mem.chip || {};
  if (typeof chip.share_of_dram === "number") {
    totals.push(kv("Of board DRAM", `${(100 * chip.share_of_dram).toFixed(2)}%`));
  }

  const stack = h("div", { class: "stack-bar" });
  const legend = h("div", { class: "legend" });
  for (const p of parts) {
    if (!p.value) continue;
    const seg = h("div", { class: `seg ${p.cls}`, title: `${p.name}: ${fmtBytes(p.value)}` });
    seg.style.width = `${Math.max(0.5, (100 * p.value) / Math.max(total, 1))}%`;
    stack.append(seg);
    legend.append(h("span", { class: "legend-item" }, h("span", { class: `legend-dot ${p.cls}` }),
      `${p.name} `, h("strong", { text: fmtBytes(p.value) })));
  }
  const children = [h("div", { class: "chart-total" }, ...totals), stack, legend];
  const byDtype = (mem.weight && mem.weight.by_dtype) || {};
  const rows = Object.entries(byDtype).map(([k, v]) => ({ name: k, value: v, label: fmtBytes(v) }));
  if (rows.length) children.push(h("h3", { text: "Weights by stored type" }), ...bars(rows, ""));
  if (mem.internal && mem.internal.peak_layer) {
    children.push(h("p", { class: "hint", text: `Peak activation memory at ${mem.internal.peak_layer}; ` +
      `${mem.internal.buffers} buffers planned (${mem.internal.strategy || "greedy"}).` }));
  }
  if (typeof mem.host_rss === "number") { // this machine's memory, not the board's: kept apart from the NPU figures
    children.push(h("p", { class: "hint", text: `This GUI process uses ${fmtBytes(mem.host_rss)} of this machine's ` +
      "memory (resident set); that is not part of the board estimate above." }));
  }
  box.replaceChildren(...children);
}

// ---------------------------------------------------------------- inference

function clearInference() {
  $("#infer-result").hidden = true;
  ui.inferred = false;
}

async function pickLabelFile(file) {
  if (!file) return;
  if (file.size > 1e6) {
    showMsg($("#infer-msg"), `${file.name} is ${fmtBytes(file.size)}: a label file has one class name per line`, true);
    return;
  }
  const names = (await file.text()).split(/\r?\n/).map((l) => l.trim()).filter((l) => l && !l.startsWith("#"));
  $("#infer-names").value = names.join(", ");
  showMsg($("#infer-msg"), `${names.length} class name${names.length === 1 ? "" : "s"} from ${file.name}.`);
  saveFormSoon();
}

async function runInference() {
  const file = $("#infer-file").files[0];
  if (!file) return;
  const btn = $("#infer-btn");
  btn.disabled = true;
  btn.textContent = "Running…";
  showMsg($("#infer-msg"), "");
  const q = new URLSearchParams({
    filename: file.name, feed_order: $("#infer-feed").value, resize: $("#infer-resize").value,
    score_thr: $("#infer-score").value || "0.3", nms_thr: $("#infer-nms").value || "0.45",
    class_names: $("#infer-names").value,
  });
  saveForm();
  try {
    const r = await api("POST", `/api/infer?${q}`, undefined, file);
    renderInference(r);
    ui.inferred = true;
    if (ui.layers) renderLayers(ui.layers);
  } catch (e) {
    showMsg($("#infer-msg"), e.message, true);
  } finally {
    btn.textContent = "Run";
    updateControls();
  }
}

function swatchCell(d) {
  const sw = h("span", { class: "swatch" });
  sw.style.background = d.color || "#999";
  return h("td", {}, sw, d.label);
}

function renderInference(r) {
  $("#infer-result").hidden = false;
  const fig = $("#infer-figure");
  if (r.drawn) {
    fig.hidden = false;
    $("#infer-image").src = `/api/download/${encodeURIComponent(r.drawn)}?inline=1&v=${Date.now()}`;
    const n = (r.detections || []).length;
    const labels = { COCO: " (COCO names)", default: " (numbered: give class names below)" }[r.class_names] || "";
    $("#infer-caption").textContent = `${n} detection${n === 1 ? "" : "s"} · YOLOX ${r.yolox.layout} layout, ` +
      `${r.yolox.num_classes} classes${labels} · ${r.resize} · ${r.feed_order.toUpperCase()} feed · ` +
      `${r.image.width}×${r.image.height} · ${r.image.name}`;
  } else {
    fig.hidden = true;
  }
  const dets = r.detections;
  $("#det-title").hidden = !dets;
  $("#det-table").hidden = !dets;
  if (dets) {
    fillTable($("#det-table"), dets.slice(0, 50).map((d) => h("tr", {}, swatchCell(d), td(d.score.toFixed(3), "num"),
      td(d.box.map((v) => v.toFixed(0)).join(", "), "mono"))), "No detection above the score threshold.");
  }
  fillTable($("#out-table"), r.outputs.map((o) => h("tr", {}, td(o.name, "mono"), td(fmtShape(o.shape), "mono"),
    td(fmtNum(o.min), "num"), td(fmtNum(o.max), "num"), td(fmtNum(o.mean), "num"),
    td(o.top ? o.top.slice(0, 3).map((t) => `#${t.index}: ${fmtNum(t.value, 3)}`).join("  ") : "", "mono"))));
}

// ---------------------------------------------------------------- layers

async function loadLayers(measure) {
  const btn = $("#accuracy-btn");
  try {
    if (measure) {
      btn.disabled = true;
      btn.textContent = "Measuring…";
    }
    const r = measure ? await api("POST", "/api/layers/accuracy", {}) : await api("GET", "/api/layers");
    ui.layers = r;
    ui.marks = new Set(r.kept_float || []);
    if (measure || (r.accuracy && r.accuracy.measured && !ui.layerSort)) {
      ui.layerSort = { key: "cosine", dir: 1 }; // measured: worst end-to-end cosine first
    }
    renderLayers(r);
  } catch (e) {
    $("#layers-note").textContent = e.message;
    $("#layers-note").classList.add("note-error");
  } finally {
    btn.textContent = "Measure accuracy";
  }
  updateControls();
}

function cosineCell(v, threshold) {
  if (v === null || v === undefined) return td("—", "muted");
  const cls = v < threshold ? (v < 0.9 ? "bad" : "low") : "";
  const fill = h("div", { class: `cos-fill ${cls}` });
  fill.style.width = `${Math.max(0, Math.min(1, v)) * 100}%`;
  return h("td", {}, h("div", { class: "cos" }, h("div", { class: "cos-bar" }, fill),
    h("span", { class: "mono", text: v.toFixed(4) })));
}

function perfByLayer() {
  const perf = ui.state.result && ui.state.result.perf;
  const out = new Map();
  for (const l of (perf && perf.layers) || []) out.set(l.name, l);
  return out;
}

// NPU estimate of a layer: its own node's, or the sum of its parts' (a layer the quantizer cut into parts).
function npuOf(row, perf) {
  const names = row.parts && row.parts.length ? row.parts.map((p) => p.name) : [row.name];
  const found = names.map((n) => perf.get(n)).filter((p) => p);
  if (!found.length) return null;
  if (found.every((p) => p.unit === "fused")) return { fused: true, us: 0 };
  return { fused: false, us: found.reduce((a, p) => a + (p.unit === "fused" ? 0 : p.npu_us || 0), 0) };
}

function npuText(n) {
  if (!n) return "—";
  return n.fused ? "fused" : `${fmtNum(n.us, 1)} µs`;
}

const SORT_KEYS = {
  index: (r) => r.index,
  cosine: (r) => r.cosine,
  cosine_single: (r) => r.cosine_single,
  npu: (r) => (r._npu && !r._npu.fused ? r._npu.us : null),
};

// Sorted copy of rows: nulls (not measured) always last; ties keep graph order.
function sortRows(rows) {
  const sort = ui.layerSort || { key: "index", dir: 1 };
  const key = SORT_KEYS[sort.key] || SORT_KEYS.index;
  return rows.slice().sort((a, b) => {
    const va = key(a), vb = key(b);
    if (va === null || va === undefined) return vb === null || vb === undefined ? a.index - b.index : 1;
    if (vb === null || vb === undefined) return -1;
    return (va - vb) * sort.dir || a.index - b.index;
  });
}

function renderSortHeaders() {
  const sort = ui.layerSort || { key: "index", dir: 1 };
  for (const th of $$("#layers-table thead th[data-sort]")) {
    const on = th.dataset.sort === sort.key;
    th.setAttribute("aria-sort", on ? (sort.dir > 0 ? "ascending" : "descending") : "none");
  }
}

function sortBy(key) {
  const cur = ui.layerSort || { key: "index", dir: 1 };
  // first click: the interesting end first (worst cosine, slowest layer); second click: the other way round
  const first = key === "npu" ? -1 : 1;
  ui.layerSort = cur.key === key ? { key, dir: -cur.dir } : { key, dir: first };
  if (ui.layers) renderLayers(ui.layers);
}

function markedLayers() {
  const keepable = new Set(((ui.layers && ui.layers.rows) || []).filter((r) => r.keepable).map((r) => r.name));
  return [...(ui.marks || [])].filter((n) => keepable.has(n));
}

function renderLayers(r) {
  const kept = new Set(r.kept_float || []);
  const hybridOk = r.hybrid && r.hybrid.available;
  const threshold = r.cos_threshold || 0.98;
  const perf = perfByLayer();
  const marked = ui.marks || new Set(kept);
  const rows = (r.rows || []).map((row) => ({ ...row, _npu: npuOf(row, perf) }));
  const trs = [];
  for (const row of sortRows(rows)) {
    const weak = row.cosine !== null && row.cosine !== undefined && row.cosine < threshold;
    const cls = [kept.has(row.name) ? "kept" : "", weak ? "weak" : ""].join(" ").trim();
    const tr = h("tr", { "data-name": row.name, "data-op": row.op_type, class: cls || null,
      "data-parts": (row.parts || []).map((p) => p.name).join(" ") || null });
    let keepCell;
    if (row.keepable && hybridOk) {
      const box = h("input", { type: "checkbox", class: "keep", value: row.name, "aria-label": `keep ${row.name} in float` });
      box.checked = marked.has(row.name);
      box.addEventListener("change", () => {
        if (box.checked) marked.add(row.name); else marked.delete(row.name);
        tr.classList.toggle("marked", box.checked);
        updateHybridButton();
      });
      tr.classList.toggle("marked", box.checked);
      keepCell = h("td", { class: "num" }, box);
    } else {
      const why = !hybridOk ? (r.hybrid && r.hybrid.reason) || "" :
        "no quantization of its own to drop (it shares its neighbours' scale, or already runs in float)";
      keepCell = h("td", { class: "num muted", title: why, text: "—" });
    }
    const nameCell = h("td", { class: "mono" });
    if (row.parts && row.parts.length) {
      const open = ui.expanded.has(row.name);
      const toggle = h("button", { type: "button", class: "parts-toggle", "aria-expanded": open ? "true" : "false",
        title: "The quantizer split this layer into parts; show them" }, `${open ? "▾" : "▸"} ${row.parts.length} parts`);
      toggle.addEventListener("click", () => {
        if (ui.expanded.has(row.name)) ui.expanded.delete(row.name); else ui.expanded.add(row.name);
        renderLayers(ui.layers);
      });
      nameCell.append(row.name, " ", toggle);
    } else {
      nameCell.append(row.name);
    }
    const prec = row.fused_into ? `${row.precision} · fused` : row.precision;
    tr.append(td(row.index, "num"), nameCell, td(row.op_type),
      h("td", { title: row.fused_into ? `fused into ${row.fused_into}` : "" },
        h("span", { class: `prec ${row.quantized ? "quant" : "float"}`, text: prec })),
      cosineCell(row.cosine, threshold),
      td(row.cosine_single === null || row.cosine_single === undefined ? "—" : row.cosine_single.toFixed(4),
        `num mono ${row.cosine_single !== null && row.cosine_single < threshold ? "weak-val" : ""}`),
      td(npuText(row._npu), "num mono"), keepCell);
    trs.push(tr);
    if (row.parts && ui.expanded.has(row.name)) {
      for (const p of row.parts) {
        const pp = p.fused_into ? `${p.precision} · fused` : p.precision;
        trs.push(h("tr", { class: "part-row", "data-part-of": row.name },
          td(""), td(`↳ ${p.name}`, "mono"), td(p.op_type),
          h("td", {}, h("span", { class: `prec ${p.quantized ? "quant" : "float"}`, text: pp })),
          td(""), td(""), td(npuText(npuOf({ name: p.name }, perf)), "num mono"), td("")));
      }
    }
  }
  fillTable($("#layers-table"), trs, "Build a model to see its layers.");
  if (ui.state.result) renderPerf(ui.state.result.perf, ui.state.result.perf_note); // slowest layers by user name
  renderSortHeaders();
  const note = $("#layers-note");
  note.classList.remove("note-error");
  const notes = [];
  if (r.rows && r.rows.length) {
    const q = r.rows.filter((x) => x.quantized).length;
    const split = r.rows.filter((x) => x.parts && x.parts.length).length;
    notes.push(`${r.rows.length} layers in ${r.model}${r.quantized ? `, ${q} quantized` : " (float model)"}` +
      (split ? `; ${split} were split by the quantizer (▸ shows the parts).` : "."));
    const sum = r.accuracy && r.accuracy.summary;
    if (r.accuracy.measured && sum) {
      const worst = sum.worst_end_to_end;
      notes.push(`Accuracy measured on ${r.accuracy.image || "the last inference image"}: ` +
        `${sum.below_end_to_end} layer(s) below the ${threshold} cosine threshold end to end` +
        (worst ? ` (worst ${worst.name}, ${worst.cosine.toFixed(4)})` : "") +
        `, ${sum.below_alone} on their own.`);
    } else if (r.accuracy.available) {
      notes.push("Run inference on an image, then measure accuracy.");
    } else if (r.accuracy.reason) {
      notes.push(`Accuracy: ${r.accuracy.reason}.`);
    }
    if (r.hybrid && !r.hybrid.available && r.hybrid.reason) notes.push(`Keep-float toggles: ${r.hybrid.reason}.`);
  }
  note.textContent = notes.join(" ");
  $("#accuracy-btn").disabled = !(r.accuracy && r.accuracy.available && ui.inferred);
  filterLayers();
  updateHybridButton();
}

function sameSet(a, b) {
  return a.size === b.size && [...a].every((x) => b.has(x));
}

// Enabled only when the marks differ from what the current model keeps in float: otherwise a rebuild would
// produce the same model.
function updateHybridButton() {
  const btn = $("#hybrid-btn");
  const r = ui.layers;
  const marked = new Set(markedLayers());
  const kept = new Set((r && r.kept_float) || []);
  const ok = r && r.hybrid && r.hybrid.available && ui.state.rebuild;
  btn.disabled = !ok || ui.job !== null || !ui.state.model || ui.state.model.framework === "rknn" ||
    sameSet(marked, kept);
  const n = marked.size;
  btn.textContent = n ? `Rebuild with ${n} layer${n === 1 ? "" : "s"} in float` :
    kept.size ? "Rebuild with every layer quantized" : "Rebuild with marked layers in float";
  btn.title = !ok ? ((r && r.hybrid && r.hybrid.reason) || "Build a quantized model first") :
    sameSet(marked, kept) ? "Mark the layers to keep in float first" : "";
}

function filterLayers() {
  const q = $("#layer-filter").value.trim().toLowerCase();
  for (const tr of $$("#layers-table tbody tr[data-name]")) {
    const hay = `${tr.dataset.name} ${tr.dataset.op} ${tr.dataset.parts || ""}`.toLowerCase();
    tr.hidden = q && !hay.includes(q);
  }
  for (const tr of $$("#layers-table tbody tr.part-row")) {
    const parent = $(`#layers-table tbody tr[data-name="${CSS.escape(tr.dataset.partOf)}"]`);
    tr.hidden = parent ? parent.hidden : false;
  }
}

// ---------------------------------------------------------------- wiring

function wireDropzone(zone) {
  zone.addEventListener("dragover", () => zone.classList.add("dragover"));
  for (const ev of ["dragleave", "drop"]) zone.addEventListener(ev, () => zone.classList.remove("dragover"));
}

async function init() {
  for (const z of $$(".dropzone")) wireDropzone(z);
  $("#model-file").addEventListener("change", (e) => pickModelFile(e.target.files[0]));
  $("#model-path-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const p = $("#model-path").value.trim();
    if (p) pickModelPath(p);
  });
  $("#config-form").addEventListener("input", scheduleValidate);
  $("#config-form").addEventListener("change", scheduleValidate);
  $("#input-size").addEventListener("input", scheduleValidate);
  $("#cfg-target_platform").addEventListener("change", filterDtypes);
  $("#do-quantization").addEventListener("change", syncQuantSection);
  // every field the user sets is kept by the server, so a reload shows the same form
  for (const sel of ["#config-form", "#do-quantization", "#input-size", "#rknn-batch", "#output-name", "#infer-feed",
    "#infer-resize", "#infer-score", "#infer-nms", "#infer-names"]) {
    $(sel).addEventListener("input", saveFormSoon);
    $(sel).addEventListener("change", saveFormSoon);
  }
  $("#infer-labels").addEventListener("change", (e) => pickLabelFile(e.target.files[0]));
  for (const th of $$("#layers-table thead th[data-sort]")) {
    th.querySelector("button").addEventListener("click", () => sortBy(th.dataset.sort));
  }
  $("#dataset-path-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const p = $("#dataset-path").value.trim();
    if (p) pickDatasetPath(p);
  });
  $("#dataset-files").addEventListener("change", (e) => uploadDataset(Array.from(e.target.files)));
  $("#dataset-clear").addEventListener("click", async () => {
    try { applyState(await api("POST", "/api/dataset/clear", {})); } catch (e) { showMsg($("#dataset-msg"), e.message, true); }
  });
  $("#output-name").addEventListener("input", (e) => { e.target.dataset.auto = "0"; });
  $("#build-btn").addEventListener("click", startBuild);
  $("#infer-file").addEventListener("change", (e) => {
    const f = e.target.files[0];
    $("#infer-file-name").textContent = f ? `${f.name} · ${fmtBytes(f.size)}` : "JPEG, PNG, BMP or WebP";
    updateControls();
  });
  $("#infer-btn").addEventListener("click", runInference);
  $("#layer-filter").addEventListener("input", filterLayers);
  $("#accuracy-btn").addEventListener("click", () => loadLayers(true));
  $("#hybrid-btn").addEventListener("click", () => {
    $("#sec-build").scrollIntoView();
    startRebuild(markedLayers());
  });
  try {
    ui.schema = await api("GET", "/api/schema");
  } catch (e) {
    console.error(e);
  }
  filterDtypes();
  syncQuantSection();
  await refreshState();
  if (ui.state.rknn) loadLayers(false);
  validateConfig();
}

document.addEventListener("DOMContentLoaded", init);
