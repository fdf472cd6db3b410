// ctdl web UI: plain JS, no build step. Libraries (vendored): JSONEditor, uPlot, NiiVue.
"use strict";
const $ = (s) => document.querySelector(s);
const el = (tag, attrs = {}, ...kids) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v; else if (k.startsWith("on")) e.addEventListener(k.slice(2), v); else e.setAttribute(k, v);
  }
  for (const k of kids) e.append(k instanceof Node ? k : document.createTextNode(k == null ? "" : String(k)));
  return e;
};
async function api(url, opts = {}) {
  const r = await fetch(url, opts);
  let body = null;
  try { body = await r.json(); } catch (e) { body = null; }
  if (!r.ok && r.status !== 422) throw new Error((body && body.detail) || `${r.status} ${r.statusText}`);
  return body;
}
const post = (url, data) => api(url, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(data) });
const fmt = (v, d = 4) => (v == null ? "" : typeof v === "number" ? (Number.isInteger(v) ? String(v) : v.toFixed(d)) : String(v));
const state = { schema: null, editor: null, mode: "form", runs: [], selected: null, compare: null, es: null,
                nv: null, roots: [], dataOffset: 0, charts: {} };

// ------------------------------------------------------------------ tabs
function showTab(name) {
  document.querySelectorAll(".page").forEach((p) => p.classList.toggle("hidden", p.id !== `tab-${name}`));
  document.querySelectorAll("nav .tab").forEach((b) => b.classList.toggle("active", b.dataset.tab === name));
  document.body.dataset.tab = name;
  if (name === "viewer") { initViewer(); fillModels().catch(() => {}); }
}
document.querySelectorAll("nav .tab").forEach((b) => b.addEventListener("click", () => showTab(b.dataset.tab)));

// ------------------------------------------------------------------ config builder
// JSONEditor handles plain schemas best: inline pydantic's $defs and turn Optional[X] (anyOf X|null) into X.
const NULLABLE = new Set();  // key paths whose default is null (Optional): an empty value there means "unset"
function simplify(node, defs, path = []) {
  if (Array.isArray(node)) return node.map((n) => simplify(n, defs, path));
  if (!node || typeof node !== "object") return node;
  if (node.$ref) {
    const name = node.$ref.split("/").pop();
    const { $ref, ...rest } = node;
    return simplify({ ...defs[name], ...rest }, defs, path);
  }
  if (node.anyOf) {
    const nonNull = node.anyOf.filter((a) => a.type !== "null");
    if (nonNull.length === 1) {
      const { anyOf, ...rest } = node;
      NULLABLE.add(path.join("."));
      const merged = simplify({ ...nonNull[0], ...rest }, defs, path);
      if (merged.default === null) delete merged.default;
      return merged;
    }
  }
  if (node.prefixItems) {  // tuples: a fixed-length array of the first item type
    const { prefixItems, ...rest } = node;
    return simplify({ ...rest, type: "array", items: prefixItems[0], minItems: prefixItems.length, maxItems: prefixItems.length, format: "table" }, defs, path);
  }
  const out = {};
  for (const [k, v] of Object.entries(node)) {
    if (k === "$defs") continue;
    if (k === "properties") {
      out.properties = {};
      for (const [pk, pv] of Object.entries(v)) out.properties[pk] = simplify(pv, defs, [...path, pk]);
    } else out[k] = simplify(v, defs, path);
  }
  // JSONEditor renders descriptions as HTML: keep "<output_dir>/<name>" visible
  if (typeof out.description === "string") out.description = out.description.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
  if (out.type === "object" && !out.properties && out.additionalProperties !== false) out.format = "object";
  return out;
}

// Drop what the form holds for "unset": null, "", and empty lists/objects where the schema's default is null.
function stripNulls(v, path = []) {
  if (Array.isArray(v)) return v.map((x) => stripNulls(x, path));
  if (v && typeof v === "object") {
    const o = {};
    for (const [k, x] of Object.entries(v)) {
      const p = [...path, k], key = p.join(".");
      if (x === null || x === undefined || (x === "" && key !== "name")) continue;
      if (NULLABLE.has(key) && typeof x === "object" && Object.keys(x).length === 0) continue;
      o[k] = stripNulls(x, p);
    }
    return o;
  }
  return v;
}

async function initConfig() {
  const [schema, recipes, saved] = await Promise.all([api("/api/schema"), api("/api/recipes"), api("/api/configs")]);
  state.schema = simplify(schema, schema.$defs || {});
  for (const r of recipes) {
    $("#recipes").append(el("button", { class: "recipe", "data-recipe": r.name, title: r.description, onclick: () => loadRecipe(r.name) }, r.name));
  }
  fillSaved(saved);
  state.editor = new JSONEditor($("#cfg-form"), {
    schema: state.schema, theme: "html", iconlib: null, disable_edit_json: true, disable_properties: true,
    disable_array_delete_all_rows: true, disable_array_delete_last_row: true, show_errors: "change",
    no_additional_properties: true, collapsed: false, remove_empty_properties: false,
    startval: { data: { format: "kits19", root: "path/to/kits19" } },
  });
  // start from the complete default config so every field is on the form
  await new Promise((resolve) => state.editor.on("ready", resolve));
  const defaults = await validateQuiet({ data: { format: "kits19", root: "path/to/kits19" } });
  if (defaults.ok) { state.editor.setValue(stripNulls(defaults.config)); $("#cfg-yaml").value = defaults.yaml; }
}
function fillSaved(list) {
  for (const sel of [$("#cfg-saved"), $("#data-config")]) {
    const keep = sel.firstElementChild;
    sel.replaceChildren(keep, ...list.map((n) => el("option", { value: n }, n)));
  }
}
async function loadRecipe(name) {
  const r = await api(`/api/recipes/${encodeURIComponent(name)}`);
  setConfig(r.config, r.yaml);
  $("#cfg-name").value = name;
  msg("#cfg-msg", `loaded preset ${name}`);
}
function setConfig(cfg, yamlText) {
  const v = validateQuiet(cfg);
  v.then((res) => {
    if (res.ok) state.editor.setValue(stripNulls(res.config));
    $("#cfg-yaml").value = yamlText || (res.yaml || "");
    showErrors(res.errors || []);
  });
}
const validateQuiet = (cfg) => post("/api/config/validate", { config: cfg });
function currentBody() {
  if (state.mode === "yaml") return { yaml: $("#cfg-yaml").value };
  return { config: stripNulls(state.editor.getValue()) };
}
function msg(sel, text, bad = false) { const m = $(sel); m.textContent = text; m.style.color = bad ? "#b91c1c" : "#15803d"; }
function clearFieldErrors() {
  document.querySelectorAll(".field-error").forEach((e) => e.classList.remove("field-error"));
  document.querySelectorAll(".field-error-msg").forEach((e) => e.remove());
}
function showErrors(errors) {
  clearFieldErrors();
  $("#cfg-errors").replaceChildren(...errors.map((e) => el("li", { "data-loc": e.loc, onclick: () => focusField(e.path) }, `${e.loc}: ${e.msg}`)));
  for (const e of errors) {
    const ed = fieldEditor(e.path);
    if (ed && ed.container) {
      ed.container.classList.add("field-error");
      ed.container.dataset.errorLoc = e.loc;
      ed.container.append(el("div", { class: "field-error-msg" }, e.msg));
    }
  }
}
function fieldEditor(path) {
  if (!state.editor || !path) return null;
  for (let n = path.length; n >= 1; n--) {  // the deepest editor that exists (an unknown key marks its section)
    const ed = state.editor.getEditor(["root", ...path.slice(0, n)].join("."));
    if (ed) return ed;
  }
  return null;
}
function focusField(path) {
  if (state.mode !== "form") setMode("form");
  const ed = fieldEditor(path);
  if (ed && ed.container) ed.container.scrollIntoView({ block: "center" });
}
async function validateConfig() {
  const res = await post("/api/config/validate", currentBody());
  showErrors(res.errors || []);
  if (res.ok) { msg("#cfg-msg", "valid"); $("#cfg-yaml").value = res.yaml; }
  else msg("#cfg-msg", `${res.errors.length} problem(s)`, true);
  return res;
}
function setMode(mode) {
  if (mode === state.mode) return;
  if (mode === "yaml") {
    validateQuiet(stripNulls(state.editor.getValue())).then((r) => { if (r.ok) $("#cfg-yaml").value = r.yaml; });
  } else {
    post("/api/config/validate", { yaml: $("#cfg-yaml").value }).then((r) => { if (r.ok) state.editor.setValue(stripNulls(r.config)); showErrors(r.errors || []); });
  }
  state.mode = mode;
  $("#cfg-form").classList.toggle("hidden", mode !== "form");
  $("#cfg-yaml").classList.toggle("hidden", mode !== "yaml");
  $("#mode-form").classList.toggle("active", mode === "form");
  $("#mode-yaml").classList.toggle("active", mode === "yaml");
}
$("#mode-form").onclick = () => setMode("form");
$("#mode-yaml").onclick = () => setMode("yaml");
$("#cfg-validate").onclick = validateConfig;
$("#cfg-save").onclick = async () => {
  const res = await post("/api/configs", { ...currentBody(), name: $("#cfg-name").value || undefined });
  if (res.ok) { msg("#cfg-msg", `saved ${res.path}`); fillSaved(await api("/api/configs")); showErrors([]); }
  else { showErrors(res.errors); msg("#cfg-msg", "not saved: invalid", true); }
};
$("#cfg-download").onclick = async () => {
  const res = await validateConfig();
  if (!res.ok) return;
  const a = el("a", { href: URL.createObjectURL(new Blob([res.yaml], { type: "application/x-yaml" })), download: `${$("#cfg-name").value || "config"}.yaml` });
  document.body.append(a); a.click(); a.remove();
};
$("#cfg-saved").onchange = async (e) => {
  if (!e.target.value) return;
  const text = await (await fetch(`/api/configs/${encodeURIComponent(e.target.value)}`)).text();
  const r = await post("/api/config/validate", { yaml: text });
  if (r.ok) { state.editor.setValue(stripNulls(r.config)); $("#cfg-yaml").value = r.yaml; $("#cfg-name").value = e.target.value; }
};
$("#cfg-start").onclick = async () => {
  const res = await post("/api/runs", currentBody());
  if (!res.ok) { showErrors(res.errors); msg("#cfg-msg", "not started: invalid config", true); return; }
  msg("#cfg-msg", `run ${res.name}: ${res.status}`);
  state.selected = res.name;
  showTab("runs");
  openRun(res.name);
};

// ------------------------------------------------------------------ runs
function connectEvents() {
  if (state.es) state.es.close();
  const watch = state.compare ? state.compare : state.selected ? [state.selected] : [];
  const es = new EventSource(`/api/events?watch=${encodeURIComponent(watch.join(","))}`);
  es.addEventListener("runs", (ev) => { state.runs = JSON.parse(ev.data); renderRuns(); });
  es.addEventListener("history", (ev) => {
    const d = JSON.parse(ev.data);
    if (state.compare) { state.compareData.histories[d.name] = d.history; drawCompare(); }
    else if (d.name === state.selected) drawRunCharts(d.history);
  });
  es.addEventListener("log", (ev) => {
    const d = JSON.parse(ev.data);
    if (d.name !== state.selected || state.compare) return;
    const pre = $("#run-log"); pre.textContent = d.log; pre.scrollTop = pre.scrollHeight;
  });
  state.es = es;
}
function renderRuns() {
  const tbody = $("#runs-table tbody");
  const checked = new Set([...document.querySelectorAll(".run-check:checked")].map((c) => c.value));
  tbody.replaceChildren(...state.runs.map((r) => {
    const tr = el("tr", { "data-run": r.name, class: r.name === state.selected ? "selected" : "" },
      el("td", {}, el("input", { type: "checkbox", class: "run-check", value: r.name })),
      el("td", {}, el("a", { href: "#", onclick: (e) => { e.preventDefault(); openRun(r.name); } }, r.name)),
      el("td", { class: `status-${r.status}`, "data-status": r.status }, r.status),
      el("td", { class: "epoch" }, r.epoch == null ? "" : `${r.epoch + 1}${r.epochs ? " / " + r.epochs : ""}`),
      el("td", {}, r.best == null ? "" : `${r.monitor} ${fmt(r.best)}`),
      el("td", {}, r.model || ""),
      el("td", {}, r.has_report ? el("a", { href: `/api/runs/${encodeURIComponent(r.name)}/files/report.html`, target: "_blank", class: "report-link" }, "report") : ""));
    if (checked.has(r.name)) tr.querySelector("input").checked = true;
    return tr;
  }));
  const cur = state.runs.find((r) => r.name === state.selected);
  if (cur && !state.compare) updateRunHeader(cur);
}
function updateRunHeader(r) {
  $("#run-title").textContent = `${r.name} — ${r.status}`;
  $("#run-title").dataset.status = r.status;
  const err = $("#run-error");
  err.textContent = r.error || ""; err.classList.toggle("hidden", !r.error);
  const rep = $("#run-report");
  rep.href = `/api/runs/${encodeURIComponent(r.name)}/files/report.html`;
  rep.classList.toggle("hidden", !r.has_report);
  $("#run-cancel").classList.toggle("hidden", !["running", "queued"].includes(r.status));
  $("#run-cases").classList.toggle("hidden", r.status !== "finished");
  $("#run-previews").classList.toggle("hidden", !r.has_previews);
}
async function openRun(name) {
  state.selected = name; state.compare = null;
  $("#compare").classList.add("hidden"); $("#run-detail").classList.remove("hidden");
  $("#cases-table").classList.add("hidden");
  const d = await api(`/api/runs/${encodeURIComponent(name)}`);
  updateRunHeader(d);
  drawRunCharts(d.history);
  $("#run-log").textContent = d.log;
  connectEvents();
  renderRuns();
}
function makeChart(target, title, xs, series) {
  if (state.charts[target]) { state.charts[target].destroy(); delete state.charts[target]; }
  const node = $(target); node.replaceChildren();
  if (!xs.length || !series.length) { node.append(el("div", { class: "muted" }, `${title}: no points yet`)); node.dataset.points = "0"; return; }
  const palette = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4b5563"];
  const opts = { title, width: 520, height: 260, scales: { x: { time: false } },
    series: [{ label: "epoch" }, ...series.map((s, i) => ({ label: s.label, stroke: palette[i % palette.length], width: 2, spanGaps: true, points: { show: true, size: 4 } }))] };
  state.charts[target] = new uPlot(opts, [xs, ...series.map((s) => s.values)], node);
  node.dataset.points = String(xs.length);
}
function drawRunCharts(h) {
  const xs = (h.epoch || []).map((e) => e);
  const lossCols = Object.keys(h).filter((k) => /loss/.test(k));
  const metricCols = Object.keys(h).filter((k) => k.startsWith("val_") && !/loss/.test(k));
  makeChart("#chart-loss", "loss", xs, lossCols.map((k) => ({ label: k, values: h[k] })));
  makeChart("#chart-metrics", "validation metrics", xs, metricCols.map((k) => ({ label: k, values: h[k] })));
}
$("#run-cancel").onclick = async () => { await post(`/api/runs/${encodeURIComponent(state.selected)}/cancel`, {}); };
$("#run-cases").onclick = () => openCases(state.selected);
$("#runs-compare").onclick = async () => {
  const names = [...document.querySelectorAll(".run-check:checked")].map((c) => c.value);
  if (names.length < 2) { alert("select two or more runs"); return; }
  state.compareData = await api(`/api/compare?${names.map((n) => "runs=" + encodeURIComponent(n)).join("&")}`);
  state.compare = names;
  $("#run-detail").classList.add("hidden"); $("#compare").classList.remove("hidden");
  $("#compare-names").textContent = names.join(", ");
  const cols = new Set();
  Object.values(state.compareData.histories).forEach((h) => Object.keys(h).forEach((k) => k !== "epoch" && cols.add(k)));
  const sel = $("#compare-col");
  sel.replaceChildren(...[...cols].map((c) => el("option", { value: c }, c)));
  sel.value = cols.has("train_loss") ? "train_loss" : [...cols][0];
  sel.onchange = drawCompare;
  drawCompare();
  const diff = state.compareData.diff;
  $("#compare-diff thead").replaceChildren(el("tr", {}, el("th", {}, "config key"), ...names.map((n) => el("th", {}, n))));
  $("#compare-diff tbody").replaceChildren(...diff.map((d) => el("tr", {}, el("td", {}, d.key), ...names.map((n) => el("td", {}, JSON.stringify(d.values[n]))))));
  connectEvents();
};
function drawCompare() {
  const col = $("#compare-col").value, hs = state.compareData.histories;
  const epochs = [...new Set(Object.values(hs).flatMap((h) => h.epoch || []))].sort((a, b) => a - b);
  const series = Object.entries(hs).map(([n, h]) => {
    const m = new Map((h.epoch || []).map((e, i) => [e, (h[col] || [])[i]]));
    return { label: n, values: epochs.map((e) => (m.has(e) ? m.get(e) : null)) };
  });
  makeChart("#chart-compare", col, epochs, series);
}
async function openCases(name) {
  const d = await api(`/api/runs/${encodeURIComponent(name)}/cases`);
  const cols = ["case_id", ...d.columns.filter((c) => /(_dice|_hd95_mm|_volume_pred_ml)$/.test(c))];
  let sortKey = cols[1], asc = true;
  const table = $("#cases-table"); table.classList.remove("hidden");
  const render = () => {
    const rows = [...d.cases].sort((a, b) => ((a[sortKey] ?? -1e9) > (b[sortKey] ?? -1e9) ? 1 : -1) * (asc ? 1 : -1));
    table.querySelector("thead").replaceChildren(el("tr", {}, ...cols.map((c) => el("th", { onclick: () => { asc = sortKey === c ? !asc : true; sortKey = c; render(); } }, c + (c === sortKey ? (asc ? " ▲" : " ▼") : "")))));
    table.querySelector("tbody").replaceChildren(...rows.map((r) => el("tr", { class: "case-row", "data-case": r.case_id, onclick: () => openCaseInViewer(r) }, ...cols.map((c) => el("td", {}, fmt(r[c], 3))))));
  };
  render();
}
function openCaseInViewer(c) {
  if (!c.image) { alert("the case's image is not inside the served folders"); return; }
  stopPreviews();
  showTab("viewer");
  $("#v-root").value = c.image.root; $("#v-image").value = c.image.path;
  $("#v-overlay").value = c.prediction ? c.prediction.path : "";
  const overlays = [];
  if (c.prediction && c.truth) overlays.push({ url: `/api/errormap?pred_root=${c.prediction.root}&pred=${encodeURIComponent(c.prediction.path)}&truth_root=${c.truth.root}&truth=${encodeURIComponent(c.truth.path)}`, name: "errors.nii.gz", lut: "errors" });
  else if (c.prediction) overlays.push({ root: c.prediction.root, path: c.prediction.path, lut: "labels" });
  openVolumes({ root: c.image.root, path: c.image.path }, overlays);
}

// Live validation previews (evaluation.previews): the validation case's CT (model grid, scaled to 0..255) with
// the prediction of each validation epoch; an epoch slider picks one, new epochs join while the run trains.
async function openPreviews(run) {
  const d = await api(`/api/runs/${encodeURIComponent(run)}/previews`);
  const [cid] = Object.keys(d.cases);
  if (!cid || !d.cases[cid].epochs.length) { alert(`${run}: no validation previews yet`); return; }
  stopPreviews();
  state.previews = { run, cid, ...d.cases[cid], status: d.status, seq: 0 };
  showTab("viewer");
  $("#v-window").value = "0,255";
  $("#v-root").value = "runs"; $("#v-image").value = state.previews.ct;
  const s = $("#v-epoch");
  $("#v-epoch-wrap").classList.remove("hidden");
  setPreviewEpochs(state.previews.epochs, state.previews.predictions, true);
  let timer = null;
  s.oninput = () => { clearTimeout(timer); timer = setTimeout(() => showPreviewEpoch(+s.value), 120); };
  state.previewPoll = setInterval(pollPreviews, 2000);
}
function setPreviewEpochs(epochs, predictions, jumpToLast) {
  const p = state.previews, s = $("#v-epoch");
  p.epochs = epochs; p.predictions = predictions;
  s.max = epochs.length - 1;
  s.dataset.epochs = epochs.join(",");
  if (jumpToLast) { s.value = epochs.length - 1; showPreviewEpoch(epochs.length - 1); }
  else $("#v-epoch-label").textContent = `${epochs[+s.value]} (of ${epochs.length})`;
}
async function showPreviewEpoch(i) {
  const p = state.previews; if (!p) return;
  const ep = p.epochs[i], seq = ++p.seq;
  $("#v-epoch-label").textContent = `${ep} (of ${p.epochs.length})`;
  $("#v-overlay").value = p.predictions[ep];
  await openVolumes({ root: "runs", path: p.ct }, [{ root: "runs", path: p.predictions[ep], lut: "labels" }]);
  if (state.previews === p && seq === p.seq) document.body.dataset.previewEpoch = ep;  // the last one asked for is shown
}
async function pollPreviews() {
  const p = state.previews;
  if (!p || document.body.dataset.tab !== "viewer") return;
  const d = await api(`/api/runs/${encodeURIComponent(p.run)}/previews`).catch(() => null);
  if (!d || state.previews !== p || !d.cases[p.cid]) return;
  if (d.cases[p.cid].epochs.length !== p.epochs.length) setPreviewEpochs(d.cases[p.cid].epochs, d.cases[p.cid].predictions, false);
  if (!["running", "queued"].includes(d.status)) stopPreviews(false);
}
function stopPreviews(hide = true) {
  if (state.previewPoll) { clearInterval(state.previewPoll); state.previewPoll = null; }
  if (!hide) return;
  if (state.previews && $("#v-window").value === "0,255") $("#v-window").value = "-200,500";
  state.previews = null; $("#v-epoch-wrap").classList.add("hidden"); delete document.body.dataset.previewEpoch;
}
$("#run-previews").onclick = () => openPreviews(state.selected);

// ------------------------------------------------------------------ dataset check
async function initRoots() {
  const info = await api("/api/info");
  $("#version").textContent = `v${info.version}`;
  state.roots = info.roots;
  for (const sel of [$("#data-root"), $("#v-root")]) sel.replaceChildren(...info.roots.map((r) => el("option", { value: r.root, title: r.path }, `${r.root}: ${r.path}`)));
  if (info.roots.length > 1) $("#data-root").value = "data0";
}
async function checkData(append = false) {
  if (!append) state.dataOffset = 0;
  const q = new URLSearchParams({ root: $("#data-root").value, path: $("#data-path").value, offset: state.dataOffset, limit: 10 });
  if ($("#data-config").value) q.set("config", $("#data-config").value); else q.set("n_classes", 3);
  msg("#data-msg", "reading cases…");
  let d;
  try { d = await api(`/api/datasets/check?${q}`); } catch (e) { msg("#data-msg", e.message, true); return; }
  const tbody = $("#data-table tbody");
  if (!append) tbody.replaceChildren();
  for (const r of d.rows) {
    const view = r.image ? el("button", { onclick: () => { showTab("viewer"); $("#v-root").value = r.image.root; $("#v-image").value = r.image.path; $("#v-overlay").value = r.label ? r.label.path : ""; openFromInputs(); } }, "view") : "";
    tbody.append(el("tr", { class: r.flags.length ? "flagged" : "", "data-case": r.case_id },
      el("td", {}, r.case_id), el("td", {}, (r.shape || []).join(" × ")), el("td", {}, (r.spacing || []).map((s) => fmt(s, 3)).join(" × ")),
      el("td", {}, r.orientation || ""), el("td", {}, r.hu_min == null ? "" : `${fmt(r.hu_min, 0)} .. ${fmt(r.hu_max, 0)}`),
      el("td", {}, (r.label_values || []).join(", ")), el("td", { class: "flag" }, r.flags.join("; ")), el("td", {}, view)));
  }
  state.dataOffset += d.rows.length;
  const flagged = tbody.querySelectorAll("tr.flagged").length;
  msg("#data-msg", `${d.layout}: ${state.dataOffset} of ${d.n_cases} cases checked, ${flagged} flagged`, flagged > 0);
}
$("#data-check").onclick = () => checkData(false);
$("#data-more").onclick = () => checkData(true);

// ------------------------------------------------------------------ viewer
const LUTS = {  // label colour tables: index = label value
  labels: { R: [0, 255, 255, 0, 255], G: [0, 0, 220, 128, 0], B: [0, 0, 0, 255, 255], A: [0, 255, 255, 255, 255], labels: ["background", "kidney", "tumor", "3", "4"] },
  errors: { R: [0, 0, 255, 0], G: [0, 200, 0, 110], B: [0, 0, 0, 255], A: [0, 255, 255, 255], labels: ["", "true positive", "false positive", "false negative"] },
};
function initViewer() {
  if (state.nv) return;
  // light-blue crosshair: never confused with the label colours (red kidney, yellow tumour)
  state.nv = new niivue.Niivue({ backColor: [0, 0, 0, 1], show3Dcrosshair: true, isColorbar: false, logLevel: "error",
    crosshairColor: [0.3, 0.7, 1, 1], crosshairWidth: 1, multiplanarShowRender: niivue.SHOW_RENDER ? niivue.SHOW_RENDER.ALWAYS : 1 });
  state.nv.attachTo("gl");
  state.nv.setSliceType(+$("#v-slice").value);
}
const volUrl = (v, preview) => v.url || `/api/volume/${v.root}/${v.path.split("/").map(encodeURIComponent).join("/")}${preview ? "?preview=" + preview : ""}`;
async function openVolumes(image, overlays = [], preview = 160) {
  initViewer();
  const nv = state.nv;
  const [lo, hi] = $("#v-window").value.split(",").map(Number);
  const list = (pv) => [
    { url: volUrl(image, pv), name: "image.nii.gz", cal_min: lo, cal_max: hi, colormap: "gray" },
    ...overlays.map((o) => ({ url: volUrl(o, pv), name: o.name || "overlay.nii.gz", opacity: +$("#v-opacity").value })),
  ];
  const t0 = performance.now();
  document.body.dataset.viewer = "loading";
  $("#v-msg").textContent = "loading preview…";
  const applyLuts = () => {
    overlays.forEach((o, i) => { const v = nv.volumes[i + 1]; if (v) { v.setColormapLabel(LUTS[o.lut || "labels"]); v.opacity = +$("#v-opacity").value; } });
    nv.volumes[0].cal_min = lo; nv.volumes[0].cal_max = hi;
    nv.updateGLVolume();
    legend(overlays);
  };
  try {
    // a preview only pays off for a large volume (header read only, no voxels)
    const hdr = image.root ? await api(`/api/volume-header?root=${image.root}&path=${encodeURIComponent(image.path)}`).catch(() => null) : null;
    const small = hdr && hdr.shape && Math.max(...hdr.shape.slice(0, 3)) <= preview;
    await nv.loadVolumes(list(small ? 0 : preview));
    applyLuts();
    // two animation frames: the preview has been painted before the full volume's download and decoding start
    await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
    window.ctdlFirstPicture = performance.now() - t0;
    window.ctdlTimes = { first_picture_s: window.ctdlFirstPicture / 1000 };
    document.body.dataset.viewer = "preview";
    if (!small && !window.ctdlSkipFull) {  // ctdlSkipFull: set by bench/web_viewer_first_picture.py --skip-full
      $("#v-msg").textContent = `preview shown in ${(window.ctdlFirstPicture / 1000).toFixed(2)} s; loading full resolution…`;
      await nv.loadVolumes(list(0));
      applyLuts();
    }
    if (!small && window.ctdlSkipFull) {
      $("#v-msg").textContent = `preview shown in ${(window.ctdlFirstPicture / 1000).toFixed(2)} s (full resolution skipped)`;
      return;
    }
    window.ctdlTimes.full_s = (performance.now() - t0) / 1000;
    document.body.dataset.viewer = "full";
    $("#v-msg").textContent = `full resolution ${nv.volumes[0].dims.slice(1, 4).join(" × ")} (preview after ${(window.ctdlFirstPicture / 1000).toFixed(2)} s, full after ${((performance.now() - t0) / 1000).toFixed(2)} s)`;
  } catch (e) {
    document.body.dataset.viewer = "error";
    $("#v-msg").textContent = `could not load: ${e.message || e}`;
    return;
  }
  const lab = overlays.find((o) => o.root && (o.lut || "labels") === "labels");
  const tbody = $("#v-volumes tbody"); tbody.replaceChildren();
  $("#v-download").classList.toggle("hidden", !lab);
  if (lab) {
    $("#v-download").href = volUrl(lab, 0); $("#v-download").download = lab.path.split("/").pop();
    const st = await api(`/api/volume-stats?root=${lab.root}&path=${encodeURIComponent(lab.path)}&names=background,kidney,tumor`).catch(() => null);
    if (st) for (const l of st.labels) if (l.label > 0) tbody.append(el("tr", { "data-label": l.name }, el("td", {}, l.name), el("td", {}, l.voxels), el("td", {}, fmt(l.ml, 2))));
  }
}
function legend(overlays) {
  const lg = $("#v-legend"); lg.replaceChildren();
  for (const o of overlays) {
    const t = LUTS[o.lut || "labels"];
    t.labels.forEach((name, i) => { if (i > 0 && name && !/^\d$/.test(name)) lg.append(el("span", { class: "swatch", style: `background: rgb(${t.R[i]},${t.G[i]},${t.B[i]})` }), name); });
  }
}
function openFromInputs() {
  const root = $("#v-root").value, image = $("#v-image").value.trim(), ov = $("#v-overlay").value.trim();
  if (!image) { $("#v-msg").textContent = "give an image path"; return; }
  openVolumes({ root, path: image }, ov ? [{ root, path: ov, lut: "labels" }] : []);
}
$("#v-open").onclick = () => { stopPreviews(); openFromInputs(); };
$("#v-window").onchange = () => { const nv = state.nv; if (!nv || !nv.volumes.length) return; const [lo, hi] = $("#v-window").value.split(",").map(Number); nv.volumes[0].cal_min = lo; nv.volumes[0].cal_max = hi; nv.updateGLVolume(); };
$("#v-opacity").oninput = () => { const nv = state.nv; if (!nv) return; for (let i = 1; i < nv.volumes.length; i++) nv.setOpacity(i, +$("#v-opacity").value); };
$("#v-slice").onchange = () => { initViewer(); state.nv.setSliceType(+$("#v-slice").value); };
$("#v-upload").onchange = async (e) => {
  const f = e.target.files[0]; if (!f) return;
  $("#v-msg").textContent = `uploading ${f.name}…`;
  const r = await fetch(`/api/upload?name=${encodeURIComponent(f.name)}`, { method: "PUT", body: f });
  const body = await r.json().catch(() => ({}));
  if (!r.ok) { $("#v-msg").textContent = `upload refused: ${body.detail || r.status}`; return; }
  $("#v-root").value = body.root; $("#v-image").value = body.path; $("#v-overlay").value = "";
  openFromInputs();
};
$("#v-predict").onclick = async () => {
  const model = $("#v-model").value; if (!model) { $("#v-msg").textContent = "choose a trained run"; return; }
  const root = $("#v-root").value, path = $("#v-image").value.trim();
  let job;
  try { job = await post("/api/predict", { model, root, path }); } catch (e) { $("#v-msg").textContent = e.message; return; }
  $("#v-msg").textContent = "predicting…";
  const poll = async () => {
    const s = await api(`/api/predict/${job.job}`);
    if (s.status === "running") { setTimeout(poll, 1000); return; }
    if (s.status === "failed") { $("#v-msg").textContent = `prediction failed: ${s.error || s.log.slice(-500)}`; return; }
    $("#v-overlay").value = s.mask.path;
    openVolumes({ root, path }, [{ root: s.mask.root, path: s.mask.path, lut: "labels" }]);
  };
  poll();
};
async function fillModels() {
  const runs = await api("/api/runs");
  $("#v-model").replaceChildren(el("option", { value: "" }, "trained run…"), ...runs.filter((r) => r.status === "finished").map((r) => el("option", { value: r.name }, r.name)));
}

// ------------------------------------------------------------------ start
(async () => {
  const tab = (location.hash || "#config").slice(1);
  showTab(["config", "runs", "data", "viewer"].includes(tab) ? tab : "config");
  await initRoots();
  connectEvents();
  fillModels();
  await initConfig();
  document.body.dataset.ready = "1";
})().catch((e) => { $("#status").textContent = `error: ${e.message}`; console.error(e); });
