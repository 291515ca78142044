// Shared helpers, prepended to every widget module by mistudio_widgets/widgets/base.py.
// Text from the kernel is only ever set through textContent, never parsed as HTML.

function h(tag, attrs = {}, ...kids) {
  const svg = ["svg", "rect", "line", "text", "title", "g", "path", "polyline"].includes(tag);
  const el = svg ? document.createElementNS("http://www.w3.org/2000/svg", tag) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "text") el.textContent = String(v);
    else if (k === "on") for (const [ev, fn] of Object.entries(v)) el.addEventListener(ev, fn);
    else if (k === "class") el.setAttribute("class", v);
    else if (k === "style" && typeof v === "object") Object.assign(el.style, v);
    else if (k === "value") el.value = v;
    else if (k === "checked") el.checked = !!v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const kid of kids.flat()) {
    if (kid === null || kid === undefined || kid === false) continue;
    el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  }
  return el;
}

function fmtInt(n) { return n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US"); }
function fmtNum(n, d = 1) {
  if (n === null || n === undefined) return "–";
  const x = Number(n);
  return Math.abs(x) >= 1e6 ? x.toExponential(2) : x.toFixed(d);   // huge values (a perplexity) stay readable
}
function fmtBytes(b) {
  if (!b && b !== 0) return "–";
  const u = ["B", "KiB", "MiB", "GiB", "TiB"]; let i = 0; b = Number(b);
  while (b >= 1024 && i < u.length - 1) { b /= 1024; i++; }
  return `${b.toFixed(i ? 1 : 0)} ${u[i]}`;
}

// A labelled figure for the key-value grids (.kv).
function kv(label, value) { return h("div", {}, h("span", { class: "muted", text: label }), h("b", { text: value })); }

function send(model, action, args = {}) { model.send({ action, args }); }

function field(labelText, input, help) {
  const l = h("label", { title: help || "" }, labelText, input);
  return l;
}

function select(options, value, attrs = {}) {
  const s = h("select", attrs);
  for (const o of options) {
    const [v, t] = Array.isArray(o) ? o : [o, o];
    s.append(h("option", { value: v, text: t }));
  }
  if (value !== undefined) s.value = value;
  return s;
}

// A histogram as SVG bars; each bar has a tooltip with its range and count.
function histogram(counts, edges, { width = 420, height = 120, xlabel = "", digits = 0 } = {}) {
  const svg = h("svg", { width, height: height + 28, viewBox: `0 0 ${width} ${height + 28}`, role: "img",
                         "aria-label": xlabel ? `histogram of ${xlabel}` : "histogram", class: "histogram" });
  if (!counts || !counts.length) return svg;
  const max = Math.max(...counts, 1), n = counts.length, bw = (width - 40) / n;
  counts.forEach((c, i) => {
    const bh = (c / max) * height;
    const r = h("rect", { x: 36 + i * bw, y: height - bh, width: Math.max(bw - 1, 1), height: bh, class: "binbar" });
    r.append(h("title", { text: `${fmtNum(edges[i], digits)}–${fmtNum(edges[i + 1], digits)}: ${fmtInt(c)}` }));
    svg.append(r);
  });
  svg.append(h("text", { x: 0, y: 10, text: fmtInt(max) }));
  svg.append(h("text", { x: 36, y: height + 14, text: fmtNum(edges[0], digits) }));
  svg.append(h("text", { x: width - 40, y: height + 14, text: fmtNum(edges[edges.length - 1], digits) }));
  if (xlabel) svg.append(h("text", { x: width / 2 - 40, y: height + 26, text: xlabel }));
  return svg;
}

// Progress bar, last message and last error of an EngineWidget; returns the element.
function statusBar(model) {
  const bar = h("div"), barBox = h("div", { class: "bar" }, bar);
  const label = h("span", { class: "muted" }), msg = h("span", { class: "ok", "data-testid": "message" });
  const err = h("div", { class: "error", "data-testid": "error" });
  const el = h("div", {}, h("div", { class: "status", "data-testid": "status" }, barBox, label, msg), err);
  const update = () => {
    const busy = model.get("status") === "busy", p = model.get("progress") || {};
    barBox.style.display = busy ? "" : "none";
    const frac = p.total ? Math.min(p.done / p.total, 1) : 0;
    bar.style.width = `${(frac * 100).toFixed(1)}%`;
    label.textContent = busy ? `${model.get("task")}: ${p.stage || "starting"} ${p.total ? `${fmtInt(p.done)}/${fmtInt(p.total)} ${p.unit}` : ""} ${p.message || ""}` : "";
    msg.textContent = busy ? "" : model.get("message") || "";
    const e = model.get("error") || {};
    err.textContent = e.problem ? `${e.problem}${e.fix ? `\nFix: ${e.fix}` : ""}` : "";
  };
  for (const k of ["status", "progress", "error", "message", "task"]) model.on(`change:${k}`, update);
  update();
  return el;
}

function busyDisables(model, ...buttons) {
  const upd = () => { for (const b of buttons) b.disabled = model.get("status") === "busy"; };
  model.on("change:status", upd); upd();
}
