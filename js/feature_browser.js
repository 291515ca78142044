// FeatureBrowser: a virtualised list of every feature (filter and sort happen here, on column arrays that
// arrived as one binary buffer), the open feature's detail, a co-activation heatmap and the prompt tester.

const ROW = 24;

function columnsOf(model) {
  const dv = model.get("columns"), n = model.get("n_features");
  if (!dv || !n || !dv.byteLength) return null;
  const buf = dv.buffer.slice(dv.byteOffset, dv.byteOffset + dv.byteLength);
  const impact = dv.byteLength >= 16 * n ? new Float32Array(buf, 12 * n, n) : null;
  return { frequency: new Float32Array(buf, 0, n), mean: new Float32Array(buf, 4 * n, n), max: new Float32Array(buf, 8 * n, n),
           impact: impact && impact.some((v) => !Number.isNaN(v)) ? impact : null };
}

// Token spans coloured by value (relative to `peak`); hovering a token shows its value in the page's tip
// (see tipFor). Text goes in as textContent.
function tokSpan(t, v, peak, cls) {
  const a = peak > 0 ? Math.max(0, Math.min(v / peak, 1)) : 0;
  const span = h("span", { class: "ftok" + cls, "data-tip": `${JSON.stringify(t)}  ${v.toFixed(3)}${peak > 0 ? ` (${(100 * v / peak).toFixed(0)}% of max)` : ""}`,
                          "data-value": v.toFixed(4), style: { background: a > 0 ? `rgba(255, 120, 0, ${(0.12 + 0.78 * a).toFixed(3)})` : "" } });
  span.textContent = t.replace(/\n/g, "⏎");
  return span;
}

// The "why" colourings of a token: saliency (signed: green raises the activation, blue lowers it, relative to
// `peak`, the largest magnitude) or attention (purple: the share of the peak token's attention).
function whySpan(t, v, peak, cls, kind) {
  const a = peak > 0 ? Math.min(Math.abs(v) / peak, 1) : 0;
  const rgb = kind === "attention" ? "142, 68, 173" : v >= 0 ? "56, 142, 60" : "25, 118, 210";
  const tip = kind === "attention" ? `${JSON.stringify(t)}  ${(100 * v).toFixed(1)}% of the attention from the marked token`
    : `${JSON.stringify(t)}  ${v >= 0 ? "+" : ""}${v.toFixed(3)} of the activation`;
  const span = h("span", { class: "ftok" + cls, "data-tip": tip, "data-value": v.toFixed(4),
                          style: { background: a > 0 ? `rgba(${rgb}, ${(0.1 + 0.8 * a).toFixed(3)})` : "" } });
  span.textContent = t.replace(/\n/g, "⏎");
  return span;
}

function tokenLine(tokens, values, peak, { mark = -1, onClick = null } = {}) {
  const line = h("div", { class: "fb-tokens" });
  tokens.forEach((t, i) => {
    const span = tokSpan(t, values[i] || 0, peak, i === mark ? " peak" : "");
    if (onClick) span.addEventListener("click", () => onClick(i));
    line.append(span);
  });
  return line;
}

// An example window centred on its peak token (the peaks of a feature's examples line up in one column),
// showing RADIUS tokens either side; a click shows the whole stored window, wrapped, and another folds it.
const RADIUS = 8;
function exampleLine(tokens, values, peak, mark, paint = null) {
  const line = h("div", { class: "fb-tokens centred collapsed", "data-testid": "fb-example-line", title: "click to show the whole window" });
  const before = h("span", { class: "before" }), at = h("span", { class: "at" }), after = h("span", { class: "after" });
  tokens.forEach((t, i) => {
    const far = Math.abs(i - mark) > RADIUS ? " far" : "";
    const cls = (i === mark ? " peak" : "") + far;
    (i < mark ? before : i === mark ? at : after).append(paint ? paint(t, i, cls) : tokSpan(t, values[i] || 0, peak, cls));
  });
  line.append(before, at, after);
  line.addEventListener("click", () => line.classList.toggle("collapsed"));
  return line;
}

// One tip per widget for the token under the pointer: styled like the page (a native title is slow, small
// and unstyled), placed under the token inside the widget's own box.
function tipFor(root) {
  const tip = h("div", { class: "fb-tip", "data-testid": "fb-tip" });
  root.append(tip);
  root.addEventListener("mouseover", (e) => {
    const t = e.target.closest && e.target.closest(".ftok[data-tip]");
    if (!t) { tip.style.display = "none"; return; }
    const r = t.getBoundingClientRect(), o = root.getBoundingClientRect();
    tip.textContent = t.dataset.tip;
    tip.style.display = "block";
    tip.style.left = `${Math.max(0, r.left - o.left)}px`;
    tip.style.top = `${r.bottom - o.top + 4}px`;
  });
  root.addEventListener("mouseleave", () => { tip.style.display = "none"; });
}

// Correlation heatmap of a set of features: column labels slanted so they never run together, a colour
// scale from -1 (blue) to +1 (red), and a tooltip per cell; clicking a cell opens that feature.
function heatmap(co, onOpen) {
  const n = co.features.length, cell = 26, pad = 52, legend = 70;
  const colourOf = (c) => c >= 0 ? `rgba(211, 47, 47, ${Math.min(Math.abs(c), 1).toFixed(3)})` : `rgba(25, 118, 210, ${Math.min(Math.abs(c), 1).toFixed(3)})`;
  const width = pad + n * cell + 24 + legend, height = pad + n * cell + 8;
  const svg = h("svg", { width, height, viewBox: `0 0 ${width} ${height}`, class: "heatmap", "data-testid": "coact-heatmap" });
  co.features.forEach((f, i) => {
    const x = pad + i * cell + cell / 2;
    svg.append(h("text", { x, y: pad - 6, text: String(f), class: "small", transform: `rotate(-45 ${x} ${pad - 6})`, "data-testid": "coact-col" }));
    svg.append(h("text", { x: pad - 6, y: pad + i * cell + 17, text: String(f), class: "small", "text-anchor": "end" }));
    co.features.forEach((g, j) => {
      const c = co.correlation[i][j];
      const r = h("rect", { x: pad + j * cell, y: pad + i * cell, width: cell - 2, height: cell - 2, fill: colourOf(c), class: "cell" });
      r.append(h("title", { text: `${f} × ${g}: correlation ${c.toFixed(3)}, fired together on ${co.together[i][j]} tokens` }));
      r.addEventListener("click", () => onOpen(g));
      svg.append(r);
    });
  });
  // the colour scale
  const lx = pad + n * cell + 24, steps = 20, sh = (n * cell) / steps;
  for (let k = 0; k < steps; k++) {
    const c = 1 - (2 * (k + 0.5)) / steps;
    svg.append(h("rect", { x: lx, y: pad + k * sh, width: 14, height: sh + 0.5, fill: colourOf(c), class: "scale" }));
  }
  for (const [v, y] of [[1, pad + 4], [0, pad + (n * cell) / 2 + 3], [-1, pad + n * cell]])
    svg.append(h("text", { x: lx + 18, y, text: v > 0 ? "+1" : String(v), class: "small" }));
  svg.append(h("text", { x: lx - 2, y: pad - 8, text: "correlation", class: "small" }));
  return svg;
}

function render({ model, el }) {
  const root = h("div", { class: "mistudio mistudio-feature-browser", "data-testid": "feature-browser" });
  const saeSel = h("select", { "data-testid": "fb-sae" });
  const info = h("span", { class: "muted", "data-testid": "fb-info" });
  const tokensIn = h("input", { type: "number", value: 65536, min: 128, step: 128, style: { width: "7em" } });
  const extractBtn = h("button", { text: "Extract", "data-testid": "fb-extract",
    on: { click: () => send(model, "extract", { tokens: Number(tokensIn.value) }) } });
  const impactBtn = h("button", { class: "secondary", text: "Measure impact", "data-testid": "fb-impact",
    title: "each feature's loss change when zeroed where it fires, over held-out text (then sort by impact)",
    on: { click: () => send(model, "impact", {}) } });
  const filter = h("input", { type: "search", placeholder: "filter: label text or index", "data-testid": "fb-filter" });
  const sortSel = select([["index", "index"], ["frequency", "frequency ↓"], ["max", "max activation ↓"], ["impact", "impact ↓ (critical first)"], ["label", "label"]], "index", { "data-testid": "fb-sort" });
  const count = h("span", { class: "muted", "data-testid": "fb-count" });
  const labelNote = h("div", { class: "muted", "data-testid": "fb-label-note" });
  const drawLabelNote = () => { labelNote.textContent = model.get("label_note") || ""; };
  drawLabelNote();
  model.on("change:label_note", drawLabelNote);
  const viewport = h("div", { class: "vlist", "data-testid": "fb-list" });
  const spacer = h("div", { class: "vspacer" });
  const empty = h("div", { class: "muted empty", "data-testid": "fb-empty" });
  viewport.append(spacer, empty);
  const listHead = h("div", { class: "vhead" }, h("span", { text: "#" }), h("span", { text: "label" }),
    h("span", { class: "num", text: "fires on", title: "share of the extraction's tokens where the feature is active" }),
    h("span", { text: "max act.", title: "largest activation, as a share of the largest of any feature" }));
  const detail = h("div", { class: "detail", "data-testid": "fb-detail", "data-redrawn": true });
  const promptIn = h("textarea", { rows: 2, placeholder: "Type text to see which features fire, e.g. WHY ARE YOU SHOUTING", "data-testid": "fb-prompt" });
  const contrastIn = h("textarea", { rows: 2, placeholder: "compared with… (optional; one text per line): features that fire on the text and not on these", "data-testid": "fb-contrast" });
  const ordinaryBox = h("input", { type: "checkbox", "data-testid": "fb-ordinary" });
  const denseIn = h("input", { type: "number", value: 0.1, min: 0, max: 1, step: 0.01, style: { width: "5em" }, "data-testid": "fb-dense",
                               title: "features firing on more than this share of the extraction's tokens are left out" });
  ordinaryBox.addEventListener("change", () => { contrastIn.disabled = ordinaryBox.checked; });
  const promptBtn = h("button", { text: "Test", "data-testid": "fb-prompt-go", on: { click: () => promptIn.value.trim() &&
    send(model, "fire", { text: promptIn.value, contrast: ordinaryBox.checked ? "" : contrastIn.value, ordinary: ordinaryBox.checked,
                          dense: Number(denseIn.value) }) } });
  const promptOut = h("div", { "data-testid": "fb-prompt-out", "data-redrawn": true });
  // "why this next token": features that push the target's logit, activation x gradient, checked by ablation
  const attrPrompt = h("input", { type: "text", placeholder: "a prompt, e.g. The capital of France is", "data-testid": "fb-attr-prompt", style: { minWidth: "320px" } });
  const attrTarget = h("input", { type: "text", placeholder: "target token (default: the model's own next one)", "data-testid": "fb-attr-target" });
  const attrBtn = h("button", { text: "Attribute", "data-testid": "fb-attr-go", on: { click: () => attrPrompt.value.trim() &&
    send(model, "attribute", { prompt: attrPrompt.value, target: attrTarget.value }) } });
  const attrOut = h("div", { "data-testid": "fb-attr-out" });
  const attrPanel = h("section", {}, h("h4", { text: "Why this next token?" }), h("div", { class: "row" }, attrPrompt, attrTarget, attrBtn), attrOut);
  // auto-labelling: settings are LabelConfig fields; the key goes with the request only, never into widget state
  const ls = () => model.get("label_settings") || {};
  const backendSel = select([["statistical", "statistics (offline, whole dictionary)"], ["local", "in-kernel model also explains"], ["openai", "OpenAI-compatible endpoint also explains"]], ls().backend, { "data-testid": "lb-backend" });
  const lbModel = h("input", { type: "text", value: ls().model || "", "data-testid": "lb-model", style: { minWidth: "160px" } });
  const lbUrl = h("input", { type: "text", value: ls().base_url || "", "data-testid": "lb-url" });
  const lbKey = h("input", { type: "password", placeholder: "API key (or set it in the environment)", autocomplete: "off", "data-testid": "lb-key", style: { minWidth: "200px" } });
  const lbTemplate = h("textarea", { rows: 5, "data-testid": "lb-template" });
  lbTemplate.value = ls().template || "";
  const lbScore = h("input", { type: "checkbox", checked: ls().score !== false, "data-testid": "lb-score" });
  const lbTop = h("input", { type: "number", value: 5, min: 1, "data-testid": "lb-top" });
  const lbRedo = h("input", { type: "checkbox", "data-testid": "lb-redo" });
  const settings = () => ({ backend: backendSel.value, model: lbModel.value.trim() || "default", base_url: lbUrl.value.trim(),
                            template: lbTemplate.value, score: lbScore.checked });
  const lbOpen = h("button", { class: "secondary", text: "Label the open feature", "data-testid": "lb-open", on: { click: () => {
    const d = model.get("detail") || {}; if (d.index !== undefined) send(model, "autolabel", { features: [d.index], settings: settings(), api_key: lbKey.value, redo: lbRedo.checked }); } } });
  const lbTopBtn = h("button", { class: "secondary", text: "Label the most frequent (not dense)", "data-testid": "lb-go", on: { click: () =>
    send(model, "autolabel", { top: Number(lbTop.value), settings: settings(), api_key: lbKey.value, redo: lbRedo.checked }) } });
  const lbAllBtn = h("button", { text: "Label every feature", "data-testid": "lb-all", on: { click: () =>
    send(model, "autolabel", { all: true, settings: settings(), api_key: lbKey.value, redo: lbRedo.checked }) } });
  const urlField = field("Base URL", lbUrl), modelField = field("Model", lbModel), keyField = field("Key", lbKey);
  const showUrl = () => { urlField.style.display = keyField.style.display = backendSel.value === "openai" ? "" : "none";
                          modelField.style.display = backendSel.value === "statistical" ? "none" : ""; };
  backendSel.addEventListener("change", () => {
    if (backendSel.value === "openai" && lbModel.value === "default") lbModel.value = "";
    if (backendSel.value !== "openai" && !lbModel.value) lbModel.value = "default";
    showUrl();
  });
  showUrl();
  model.on("change:label_settings", () => { const s2 = ls(); backendSel.value = s2.backend; lbModel.value = s2.model; lbUrl.value = s2.base_url; lbTemplate.value = s2.template; lbScore.checked = s2.score !== false; showUrl(); });
  const labelPanel = h("section", { "data-testid": "fb-autolabel" }, h("h4", { text: "Auto-label" }),
    h("div", { class: "row" }, field("Explainer", backendSel), modelField, urlField, keyField,
      h("label", { class: "check" }, lbScore, "score on held-out texts")),
    h("div", { class: "muted", text: "Every label is scored on held-out texts the explainer never saw (AUC, chance 0.50); only labels above chance title a feature." }),
    h("details", {}, h("summary", { text: "Prompt template ({examples}, {logits})" }), lbTemplate),
    h("div", { class: "row" }, lbAllBtn, lbOpen, h("span", { class: "muted", text: "or the" }), lbTop, lbTopBtn,
      h("label", { class: "check", title: "features this explainer and template labelled before are skipped unless this is ticked" }, lbRedo, "label again if already labelled")));
  busyDisables(model, extractBtn, impactBtn, promptBtn, lbOpen, lbTopBtn, lbAllBtn);
  saeSel.addEventListener("change", () => send(model, "select", { id: saeSel.value }));
  root.append(
    h("div", { class: "row" }, h("b", { text: "SAE" }), saeSel, info, h("span", { class: "muted", text: "tokens:" }), tokensIn, extractBtn, impactBtn),
    h("div", { class: "fb-grid" },
      h("div", { class: "fb-left" }, h("div", { class: "row" }, filter, sortSel), count, labelNote, listHead, viewport),
      detail),
    h("section", {}, h("h4", { text: "Prompt tester" }), h("div", { class: "row" }, promptIn, contrastIn),
      h("div", { class: "row" }, h("label", { class: "check" }, ordinaryBox, "compare with the same text in ordinary case"),
        field("leave out features firing on more than (share of tokens) ", denseIn), promptBtn), promptOut),
    attrPanel, labelPanel, statusBar(model));
  el.append(root);
  tipFor(root);
  reportTheme(model, root);

  let cols = null, order = [], globalMax = 0, histLog = false;
  let colourBy = "activation", whyAsked = null;  // the examples' colouring, and the feature whose "why" was asked
  const open = (i) => send(model, "open", { index: i });

  const rebuild = () => {
    cols = columnsOf(model);
    globalMax = 0;
    if (cols) for (const v of cols.max) if (v > globalMax) globalMax = v;
    const n = model.get("n_features"), labels = model.get("labels") || {};
    const q = filter.value.trim().toLowerCase();
    let idx = Array.from({ length: cols ? n : 0 }, (_, i) => i);
    if (q) idx = idx.filter((i) => String(i) === q || (labels[i] || "").toLowerCase().includes(q));
    const key = sortSel.value;
    if (key === "frequency" || key === "max") idx.sort((a, b) => cols[key][b] - cols[key][a]);
    else if (key === "impact" && cols && cols.impact) idx.sort((a, b) => cols.impact[b] - cols.impact[a]);
    else if (key === "label") idx.sort((a, b) => (labels[a] ? 0 : 1) - (labels[b] ? 0 : 1) || (labels[a] || "").localeCompare(labels[b] || "") || a - b);
    order = idx;
    count.textContent = cols ? `${fmtInt(order.length)} of ${fmtInt(n)} features` : "";
    spacer.style.height = `${order.length * ROW}px`;
    empty.textContent = cols && q && !order.length
      ? `No feature matches “${filter.value.trim()}”: the filter looks in labels and feature numbers. Try a shorter word, or clear it.` : "";
    empty.style.display = empty.textContent ? "" : "none";
    drawRows();
  };

  const drawRows = () => {
    for (const r of Array.from(viewport.querySelectorAll(".vrow"))) r.remove();
    if (!cols) return;
    const labels = model.get("labels") || {}, current = (model.get("detail") || {}).index;
    const first = Math.max(0, Math.floor(viewport.scrollTop / ROW) - 5);
    const last = Math.min(order.length, first + Math.ceil((viewport.clientHeight || 420) / ROW) + 10);
    const peak = globalMax;  // one scale for the whole list: a bar keeps its length whatever is filtered
    for (let k = first; k < last; k++) {
      const i = order[k], f = cols.frequency[i];
      const row = h("div", { class: "vrow" + (i === current ? " selected" : ""), "data-testid": "feature-row", "data-index": i,
                             style: { top: `${k * ROW}px`, height: `${ROW}px` }, on: { click: () => open(i) } },
        h("span", { class: "idx", text: String(i) }),
        h("span", { class: "lbl" + (labels[i] ? "" : " muted"), text: labels[i] || (f > 0 ? "—" : "dead") }),
        sortSel.value === "impact" && cols.impact
          ? h("span", { class: "num", "data-testid": "row-impact", title: "loss change (nats per token) when zeroed where it fires", text: `${cols.impact[i] >= 0 ? "+" : ""}${cols.impact[i].toExponential(1)}` })
          : h("span", { class: "num", text: f > 0 ? `${(100 * f).toFixed(f < 0.001 ? 3 : 2)}%` : "0" }),
        h("span", { class: "minibar", title: `max activation ${fmtNum(cols.max[i], 2)}` }, h("span", { style: { width: `${peak ? (100 * cols.max[i] / peak).toFixed(0) : 0}%` } })));
      viewport.append(row);
    }
  };

  const drawDetail = () => {
    const d = model.get("detail") || {};
    detail.replaceChildren();
    if (d.index === undefined) {
      detail.append(h("p", { class: "muted", text: model.get("extraction").id ? "Click a feature to open it." : "No extraction yet for this SAE: press Extract." }));
      return;
    }
    const labelIn = h("input", { type: "text", value: d.label || "", placeholder: "label this feature", "data-testid": "fb-label-input" });
    const save = h("button", { text: "Save label", "data-testid": "fb-label-save", on: { click: () => send(model, "label", { index: d.index, label: labelIn.value }) } });
    const steer = h("button", { class: "secondary", text: "Steer with this", "data-testid": "fb-steer", on: { click: () => send(model, "steer", { index: d.index }) } });
    const coBtn = h("button", { class: "secondary", text: "Co-activation with neighbours", "data-testid": "fb-coact",
      on: { click: () => send(model, "coact", { features: [d.index, ...d.neighbours.map((n) => n.index)] }) } });
    // only a manual label or one scoring above chance on held-out texts titles the feature; otherwise the
    // newest automatic label is named as unverified, with its score, and the examples are the evidence
    const scoreText = (l) => { const sc = (l.meta && l.meta.scoring) || {};
      return l.score !== null && l.score !== undefined ? `held-out score ${l.score.toFixed(2)}${sc.se ? ` ± ${sc.se.toFixed(2)}` : ""}, chance 0.50` : `not scored${sc.reason ? `: ${sc.reason}` : ""}`; };
    const autos = (d.labels || []).filter((l) => l.method !== "manual");
    const latest = autos.length ? autos[autos.length - 1] : null;
    const weak = !d.label && latest;
    const shownRow = d.label ? (d.labels || []).filter((l) => l.label === d.label).pop() : null;
    const logBox = h("input", { type: "checkbox", checked: histLog, "data-testid": "fb-hist-log",
                                on: { change: () => { histLog = logBox.checked; drawDetail(); } } });
    detail.append(
      h("h4", { "data-testid": "fb-title" }, `Feature ${d.index}`,
        d.label ? h("span", { class: "muted", text: ` — ${d.label}` }) : null),
      shownRow && shownRow.method !== "manual" ? h("div", { class: "muted", "data-testid": "fb-label-score", text: `label by ${shownRow.method}: ${scoreText(shownRow)}` }) : "",
      weak ? h("div", { class: "warn", "data-testid": "fb-below-chance",
        text: `No label of this feature is verified. The newest is ${latest.verdict === "unscored" ? "unscored" : "no better than chance"} (${scoreText(latest)}): ${latest.label}. Read the examples below; relabel it or write your own.` }) : "",
      h("div", { class: "row" }, labelIn, save, steer),
      h("div", { class: "kv" }, kv("fires on", `${(100 * d.frequency).toFixed(3)}% of tokens`), kv("max", fmtNum(d.max, 3)),
        kv("mean", fmtNum(d.mean, 3)), kv("median", fmtNum(d.quantiles.q50, 3)), kv("p99", fmtNum(d.quantiles.q99, 3)),
        ...(cols && cols.impact ? [kv(`impact estimate (r = ${fmtNum(((model.get("extraction") || {}).impact || {}).correlation, 2)} against exact ablation)`,
          `${cols.impact[d.index] >= 0 ? "+" : ""}${cols.impact[d.index].toExponential(2)} nats/token`)] : [])),
      h("div", { class: "density", "data-testid": "fb-density" },
        h("div", { class: "row" }, h("span", { class: "muted", text: "activation density (tokens where the feature fires)" }),
          h("label", { class: "check" }, logBox, "log scale")),
        histogram(d.histogram.counts, d.histogram.edges, { width: 520, height: 110, xlabel: "activation", ylabel: "tokens", digits: 2, log: histLog })));
    if (d.logits) {
      const list = (xs, cls) => h("table", { class: "logits " + cls }, h("tbody", {}, xs.slice(0, 10).map((x) =>
        h("tr", {}, h("td", { class: "tokcell", text: JSON.stringify(x.token) }), h("td", { class: "num", text: x.value.toFixed(2) })))));
      detail.append(h("div", { class: "row top", "data-testid": "fb-logits" },
        h("div", {}, h("div", { class: "muted", text: "promotes" }), list(d.logits.positive, "pos")),
        h("div", {}, h("div", { class: "muted", text: "suppresses" }), list(d.logits.negative, "neg")),
        histogram(d.logits.histogram.counts, d.logits.histogram.edges, { width: 300, height: 90, xlabel: "logit of the decoder direction", ylabel: "tokens", digits: 1 })));
    }
    detail.append(h("div", { class: "row", "data-testid": "fb-neighbours" }, h("span", { class: "muted", text: "neighbours:" }),
      d.neighbours.map((n) => h("button", { class: "link", text: `${n.index} (${n.cosine.toFixed(2)})`, "data-index": n.index, on: { click: () => open(n.index) } }))), coBtn);
    const co = model.get("coact") || {};
    if (co.features && co.features[0] === d.index) detail.append(heatmap(co, open));
    // the top examples coloured by activation, or (read again by the model, on demand) by integrated-gradient
    // saliency at the peak token or by where the attention before the hook looks from it
    const colourSel = select([["activation", "activation"], ["saliency", "saliency (which tokens make it fire)"], ["attention", "attention from the peak token"]],
      colourBy, { "data-testid": "fb-colour-by" });
    colourSel.addEventListener("change", () => { colourBy = colourSel.value; whyAsked = null; drawDetail(); });
    const wy = model.get("example_why") || {};
    const whyHere = wy.index === d.index && wy.extraction === (model.get("extraction") || {}).id;
    const whyNote = h("div", { class: "muted", "data-testid": "fb-why-note" });
    if (colourBy !== "activation" && !whyHere) {
      if (whyAsked !== d.index) { whyAsked = d.index; send(model, "example_why", { index: d.index }); }
      whyNote.textContent = "reading the top examples again to weigh their tokens…";
    } else if (colourBy !== "activation") {
      const rows = wy.examples;
      if (colourBy === "saliency") {
        const gaps = rows.filter((r) => r.completeness_gap !== null).map((r) => r.completeness_gap);
        whyNote.textContent = `saliency of the top ${rows.length} examples: integrated gradients (${wy.steps} steps) of the activation at the marked token, each window read alone after a BOS; `
          + `green raises it, blue lowers it; they add up to the activation within ${gaps.length ? (100 * Math.max(...gaps)).toFixed(1) : "–"}%`;
      } else {
        const sinks = rows.filter((r) => r.attention_sink !== null).map((r) => r.attention_sink);
        whyNote.textContent = wy.attention_layer === null ? "this hook comes before any attention layer: nothing to show"
          : `attention of layer ${wy.attention_layer} from the marked token (top ${rows.length} examples), mean over heads; the BOS took ${sinks.length ? (100 * sinks.reduce((a, b) => a + b, 0) / sinks.length).toFixed(0) : "–"}% `
            + "on average and is left out (the rest renormalised)";
      }
    }
    const ex = h("div", { class: "examples", "data-testid": "fb-examples" }, h("div", { class: "row" }, h("span", { class: "muted", text: "top activations, coloured by" }), colourSel), whyNote);
    d.examples.forEach((e, k) => {
      const r = whyHere && colourBy !== "activation" ? wy.examples[k] : null;
      const vals = r ? (colourBy === "saliency" ? r.saliency : r.attention) : null;
      let line;
      if (vals) {
        const peak = Math.max(...vals.map(Math.abs), 1e-9);
        line = exampleLine(e.tokens, e.values, d.max, e.peak, (t, i, cls) => whySpan(t, vals[i] || 0, peak, cls, colourBy));
      } else line = exampleLine(e.tokens, e.values, d.max, e.peak);
      ex.append(h("div", { class: "example" }, h("span", { class: "num", text: e.value.toFixed(2) }), line,
        r && !vals && colourBy === "saliency" ? h("span", { class: "muted", "data-testid": "fb-why-context", text: " (fires here only with context before the window)" }) : ""));
    });
    for (const g of d.quantile_examples) {
      if (!g.examples.length) continue;
      ex.append(h("div", { class: "muted", text: `activations ${g.range[0].toFixed(2)}–${g.range[1].toFixed(2)}${g.share ? ` (${(100 * g.share).toFixed(0)}% of firings)` : ""}` }));
      for (const e of g.examples) ex.append(h("div", { class: "example" }, h("span", { class: "num", text: e.value.toFixed(2) }), exampleLine(e.tokens, e.values, d.max, e.peak)));
    }
    detail.append(ex);
    // the contexts in groups of similar meaning (the model's hidden states at the peak), on demand
    const cl = model.get("clusters") || {};
    const clOut = h("div", { class: "examples", "data-testid": "fb-clusters" });
    if (cl.index === d.index && cl.groups) {
      clOut.append(h("div", { class: "muted", text: cl.groups.length > 1
        ? `${cl.examples} contexts in ${cl.groups.length} groups (silhouette ${cl.silhouette.toFixed(2)})`
        : `${cl.examples} contexts: one group (no clear split)` }));
      cl.groups.forEach((g, k) => {
        clOut.append(h("div", { class: "muted", "data-testid": "fb-cluster", text: `group ${k + 1}: ${g.size} context(s), peaks on ${g.peak_tokens.map((t) => JSON.stringify(t)).join(", ")}` }));
        for (const e of g.examples.slice(0, 4)) clOut.append(h("div", { class: "example" }, h("span", { class: "num", text: e.value.toFixed(2) }), exampleLine(e.tokens, e.values, d.max, e.peak)));
      });
    }
    const clBtn = h("button", { class: "secondary", text: "Group contexts", "data-testid": "fb-cluster-go", title: "group this feature's contexts by the model's hidden states",
      on: { click: () => send(model, "clusters", { index: d.index }) } });
    detail.append(h("div", { class: "row" }, clBtn), clOut);
    // the test box: this feature on a text the user types
    const tryIn = h("input", { type: "text", placeholder: "test this feature on a text…", "data-testid": "fb-try-text", style: { minWidth: "320px" } });
    const tryGo = h("button", { class: "secondary", text: "Test", "data-testid": "fb-try", on: { click: () => tryIn.value.trim() && send(model, "try", { index: d.index, text: tryIn.value }) } });
    tryIn.addEventListener("keydown", (e) => { if (e.key === "Enter") tryGo.click(); });
    const tr = model.get("trial") || {};
    const tryOut = h("div", { "data-testid": "fb-try-out" });
    if (tr.index === d.index && tr.tokens) {
      tryIn.value = tr.text;
      const mx = tr.max || Math.max(tr.peak, 1e-9);
      tryOut.append(h("div", { class: "muted", text: `peak ${tr.peak.toFixed(3)}${tr.relative_peak !== null ? ` (${(100 * tr.relative_peak).toFixed(0)}% of its maximum over the extraction)` : ""}` }),
        tokenLine(tr.tokens, tr.values, mx, { mark: tr.values.indexOf(tr.peak) }));
    }
    const salGo = h("button", { class: "secondary", text: "Which tokens?", "data-testid": "fb-saliency", title: "integrated gradients: each token's share of the activation",
      on: { click: () => tryIn.value.trim() && send(model, "saliency", { index: d.index, text: tryIn.value }) } });
    const sal = model.get("saliency") || {};
    if (sal.index === d.index && sal.tokens) {
      const peakS = Math.max(...sal.saliency.map(Math.abs), 1e-9);
      const line = h("div", { class: "fb-tokens", "data-testid": "fb-saliency-line" });
      sal.tokens.forEach((t, i) => {
        line.append(whySpan(t, sal.saliency[i], peakS, i === sal.position ? " peak" : "", "saliency"));
      });
      tryOut.append(h("div", { class: "muted", text: `which tokens make it fire at the marked one (integrated gradients, ${sal.steps} steps): green raises it, blue lowers it; `
        + `they add up to ${sal.activation.toFixed(3)} − ${sal.baseline_activation.toFixed(3)} within ${(100 * sal.completeness_gap).toFixed(1)}%` }), line);
      if (sal.attention) {
        const peakA = Math.max(...sal.attention, 1e-9);
        tryOut.append(h("div", { class: "muted", text: `where layer ${sal.attention_layer}'s attention looks from the marked token (mean over heads; `
          + `the BOS took ${(100 * sal.attention_sink).toFixed(0)}% and is left out)` }),
          h("div", { class: "fb-tokens", "data-testid": "fb-attention-line" }, sal.attention.map((v, i) => whySpan(sal.tokens[i], v, peakA, i === sal.position ? " peak" : "", "attention"))));
      }
    }
    detail.append(h("div", { class: "row" }, tryIn, tryGo, salGo), tryOut);
    if (d.labels && d.labels.length) {
      detail.append(h("div", { class: "muted", text: "label history" }), h("ul", { "data-testid": "fb-label-history" },
        d.labels.map((l) => {
          const sc = (l.meta && l.meta.scoring) || {};
          const how = sc.rule ? ` by ${sc.rule}` : "";
          const score = l.method === "manual" ? "" : `, ${scoreText(l)}${how} — ${l.verdict}`;
          return h("li", { text: `${l.label} (${l.method}${l.model && l.method !== "statistical" ? `, ${l.model}` : ""}${score})` });
        })));
      if (d.scorer_note) detail.append(h("div", { class: "warn", "data-testid": "fb-scorer-note", text: d.scorer_note }));
    }
  };

  // the prompt tester's answers show each feature's current label (a relabel shows at once)
  const labelOf = (f) => { const l = (model.get("labels") || {})[f.index]; return l !== undefined ? l : f.label || ""; };
  const drawPrompt = () => {
    const p = model.get("prompt") || {};
    promptOut.replaceChildren();
    if (p.note) promptOut.append(h("div", { class: "warn", text: p.note, "data-testid": "fb-prompt-note" }));
    if (p.mode === "contrast") return drawContrast(p);
    if (!p.tokens) return;
    const top = p.features.slice(0, 12);
    const best = p.per_token.map((fs) => (fs.length ? fs[0].relative : 0));
    const perTok = h("div", { class: "muted", "data-testid": "fb-prompt-token" });
    promptOut.append(h("div", { class: "muted", text: `Ranked by peak activation ${p.ranking === "relative" ? "relative to each feature's own maximum" : "(raw)"}; `
        + `${p.left_out_dense} dense feature(s) firing on more than ${(100 * p.dense_threshold).toFixed(0)}% of tokens left out. Click a token for its features.` }),
      tokenLine(p.tokens, best, 1, { onClick: (i) => {
        perTok.textContent = `${JSON.stringify(p.tokens[i])}: ` + p.per_token[i].slice(0, 8).map((f) => `${f.index} (${f.activation.toFixed(2)}, ${(100 * f.relative).toFixed(0)}% of max)`).join(", ");
      } }), perTok, h("div", { class: "row wrap", "data-testid": "fb-prompt-features" },
      top.map((f) => h("button", { class: "link", "data-index": f.index, text: `${f.index}${labelOf(f) ? ` ${labelOf(f)}` : ""} · ${f.activation.toFixed(2)} (${(100 * f.relative).toFixed(0)}% of max) @ ${JSON.stringify(p.tokens[f.token])}`,
        on: { click: () => open(f.index) } }))));
  };

  const drawContrast = (p) => {
    const pct = (x) => `${(100 * x).toFixed(0)}%`;
    promptOut.append(h("div", { class: "muted", text: `Features that fire on the text and not on the contrast, ranked by `
      + `the mean of the differences in firing rate and in activation relative to each feature's maximum; ${p.left_out_dense} dense `
      + `feature(s) firing on more than ${pct(p.dense_threshold)} of tokens left out.` }));
    if (!p.features.length) { promptOut.append(h("div", { class: "warn", text: "No feature fires more on the text than on the contrast." })); return; }
    let chosen = p.features[0].index;
    const sides = h("div", { "data-testid": "fb-contrast-tokens" });
    const drawSides = () => {
      const f = p.features.find((x) => x.index === chosen);
      const peak = f && f.max ? f.max : Math.max(f.peak, f.peak_contrast, 1e-9);
      sides.replaceChildren(h("div", { class: "muted", text: `feature ${chosen}, per token:` }),
        ...p.texts.map((r) => h("div", { class: "row" }, h("span", { class: "muted", text: "text" }), tokenLine(r.tokens, r.values[String(chosen)], peak))),
        ...p.contrast.map((r) => h("div", { class: "row" }, h("span", { class: "muted", text: "contrast" }), tokenLine(r.tokens, r.values[String(chosen)], peak))));
    };
    // the alignment column: the cosine between the feature's decoder row and the shift of the hook's activations
    // from the contrast to the text; the best aligned of the top rows (★) is the one to steer with, which is not
    // always the best detector
    const best = p.steer_with;
    const rows = p.features.map((f) => h("tr", { "data-index": f.index, class: f.index === best ? "best" : "", on: { click: () => { chosen = f.index; drawSides(); } } },
      h("td", {}, h("button", { class: "link", text: String(f.index), on: { click: (e) => { e.stopPropagation(); open(f.index); } } })),
      h("td", { class: "num", text: f.score.toFixed(2) }), h("td", { class: "num", text: `${pct(f.rate)} / ${pct(f.rate_contrast)}` }),
      h("td", { class: "num", text: `${pct(f.relative)} / ${pct(f.relative_contrast)}` }),
      h("td", { class: "num", "data-testid": "fb-alignment", text: f.alignment.toFixed(2) }),
      h("td", {}, f.index === best ? h("button", { class: "link", text: "★ steer with this", "data-testid": "fb-steer-best",
        title: "its decoder direction is the best aligned with the shift from the contrast to the text",
        on: { click: (e) => { e.stopPropagation(); send(model, "steer", { index: f.index }); } } }) : ""),
      h("td", { text: labelOf(f) })));
    promptOut.append(h("div", { class: "table-scroll" }, h("table", { class: "table", "data-testid": "fb-contrast-table" },
      h("tr", {}, ["feature", "score", "fires on text / contrast", "mean activation (of max)", "aligned", "steer", "label"].map((x) => h("th", { text: x }))), rows)), sides);
    drawSides();
  };

  const drawAttribution = () => {
    const r = model.get("attribution") || {};
    attrOut.replaceChildren();
    if (!r.rows) return;
    const peak = Math.max(...r.rows.map((x) => Math.abs(x.attribution)), 1e-9);
    attrOut.append(h("div", { class: "muted", text: `${JSON.stringify(r.target)} after ${JSON.stringify(r.prompt)}: logit ${r.logit.toFixed(2)}; `
      + `${r.firing} features fired at ${r.hook}${r.target_note ? ` (${r.target_note})` : ""}. Attribution: activation × gradient, the logit change `
      + `it predicts; exact: the logit minus the logit with the feature zeroed${r.correlation !== null ? ` (r = ${r.correlation.toFixed(2)} over the checked rows)` : ""}.` }),
      h("div", { class: "table-scroll" }, h("table", { class: "table", "data-testid": "fb-attr-table" },
        h("tr", {}, ["feature", "attribution", "", "exact", "label"].map((x) => h("th", { text: x }))),
        r.rows.map((x) => h("tr", { "data-index": x.index },
          h("td", {}, x.index < 0 ? h("span", { class: "muted", text: "error" }) : h("button", { class: "link", text: String(x.index), on: { click: () => open(x.index) } })),
          h("td", { class: "num", text: (x.attribution >= 0 ? "+" : "") + x.attribution.toFixed(3) }),
          h("td", {}, h("div", { class: "attr-bar", style: { width: `${(60 * Math.abs(x.attribution) / peak).toFixed(1)}px`,
            background: x.attribution >= 0 ? "var(--ms-ok)" : "var(--ms-error)" } })),
          h("td", { class: "num", text: x.exact === null ? "" : (x.exact >= 0 ? "+" : "") + x.exact.toFixed(3) }),
          h("td", { text: x.label || "" }))))));
  };

  const drawHeader = () => {
    const saes = model.get("saes") || [];
    saeSel.replaceChildren(...(saes.length ? saes.map((s) => h("option", { value: s.id, text: `${s.name}${s.extraction ? "" : " (not extracted)"}` }))
      : [h("option", { value: "", text: "(no SAEs yet)" })]));
    saeSel.value = model.get("sae");
    const e = model.get("extraction") || {};
    info.textContent = e.id ? `${fmtInt(e.tokens)} tokens · ${fmtInt(e.alive)} of ${fmtInt(e.d_sae)} features fired · mean L0 ${fmtNum(e.mean_l0, 1)}`
      : model.get("sae") ? "not extracted yet" : "";
  };

  viewport.addEventListener("scroll", () => requestAnimationFrame(drawRows));
  filter.addEventListener("input", rebuild);
  sortSel.addEventListener("change", rebuild);
  model.on("change:columns", rebuild);
  model.on("change:labels", () => { rebuild(); drawPrompt(); });
  model.on("change:detail", () => { drawDetail(); drawRows(); });
  model.on("change:coact", drawDetail);
  model.on("change:trial", drawDetail);
  model.on("change:clusters", drawDetail);
  model.on("change:saliency", drawDetail);
  model.on("change:example_why", drawDetail);
  model.on("change:attribution", drawAttribution);
  model.on("change:prompt", drawPrompt);
  model.on("change:saes", drawHeader);
  model.on("change:sae", drawHeader);
  model.on("change:extraction", () => { drawHeader(); drawDetail(); });
  drawHeader(); rebuild(); drawDetail(); drawPrompt(); drawAttribution();
}

export default { render };
