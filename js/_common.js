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

// Send an action to the kernel. The status line (progress, message, error) moves next to the control
// that sent it (after the row or section holding the focused element), so an answer appears where the
// user is looking.
// A part of a widget that is drawn anew on updates is marked data-redrawn: the status line then goes
// right after that part (inside it, it would vanish with the next drawing).
function send(model, action, args = {}) {
  const status = model.__statusEl, focus = document.activeElement;
  if (status && !status.isConnected && model.__statusHome) model.__statusHome.append(status);
  if (status && status.isConnected && focus && focus !== document.body) {
    const root = status.closest(".mistudio");
    if (!model.__statusHome) model.__statusHome = status.parentElement;
    const inside = root && root.contains(focus);
    const redrawn = inside ? focus.closest("[data-redrawn]") : null;
    const host = redrawn && root.contains(redrawn) ? redrawn : inside ? focus.closest(".row, section") : null;
    if (host && host.nextSibling !== status && !host.contains(status)) host.after(status);
  }
  model.send({ action, args });
}

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

// A histogram as SVG bars with labelled axes (ticks on both), a tooltip per bar (its range and count),
// and an optional log-scaled count axis (for heavy-tailed activation densities).
function histogram(counts, edges, { width = 420, height = 120, xlabel = "", ylabel = "count", digits = 0, log = false } = {}) {
  const left = 46, bottom = 34, top = 8, right = 8;
  const svg = h("svg", { width, height: height + bottom + top, viewBox: `0 0 ${width} ${height + bottom + top}`, role: "img",
                         "aria-label": xlabel ? `histogram of ${xlabel}` : "histogram", class: "histogram" });
  if (!counts || !counts.length) return svg;
  const n = counts.length, plotW = width - left - right, bw = plotW / n;
  const max = Math.max(...counts, 1);
  const scale = log ? (c) => (c > 0 ? Math.log10(c + 1) / Math.log10(max + 1) : 0) : (c) => c / max;
  svg.append(h("line", { x1: left, y1: top + height, x2: width - right, y2: top + height, class: "axis" }));
  svg.append(h("line", { x1: left, y1: top, x2: left, y2: top + height, class: "axis" }));
  counts.forEach((c, i) => {
    const bh = scale(c) * height;
    const r = h("rect", { x: left + i * bw, y: top + height - bh, width: Math.max(bw - 1, 1), height: bh, class: "binbar" });
    r.append(h("title", { text: `${fmtNum(edges[i], digits)}–${fmtNum(edges[i + 1], digits)}: ${fmtInt(c)}` }));
    svg.append(r);
  });
  const yticks = log ? [1, 10, 100, 1e3, 1e4, 1e5, 1e6, 1e7].filter((v) => v <= max) : [0, max / 2, max];
  for (const v of yticks) {
    const y = top + height - scale(v) * height;
    svg.append(h("line", { x1: left - 3, y1: y, x2: left, y2: y, class: "axis" }));
    svg.append(h("text", { x: left - 5, y: y + 3, "text-anchor": "end", text: v >= 1e4 ? v.toExponential(0) : fmtInt(Math.round(v)) }));
  }
  const lo = edges[0], hi = edges[edges.length - 1];
  for (let k = 0; k <= 4; k++) {
    const x = left + (k / 4) * plotW;
    svg.append(h("line", { x1: x, y1: top + height, x2: x, y2: top + height + 3, class: "axis" }));
    svg.append(h("text", { x, y: top + height + 14, "text-anchor": k === 0 ? "start" : k === 4 ? "end" : "middle", text: fmtNum(lo + (k / 4) * (hi - lo), digits) }));
  }
  if (xlabel) svg.append(h("text", { x: left + plotW / 2, y: top + height + 28, "text-anchor": "middle", text: xlabel }));
  if (ylabel) svg.append(h("text", { x: 10, y: top + height / 2, "text-anchor": "middle", transform: `rotate(-90 10 ${top + height / 2})`,
                                     text: `${ylabel}${log ? " (log)" : ""}` }));
  return svg;
}

// Progress bar, last message and last error of an EngineWidget; returns the element.
function statusBar(model) {
  const bar = h("div"), barBox = h("div", { class: "bar" }, bar);
  const label = h("span", { class: "muted" }), msg = h("span", { class: "ok", "data-testid": "message" });
  const err = h("div", { class: "error", "data-testid": "error" });
  const el = h("div", { class: "status-line" }, h("div", { class: "status", "data-testid": "status" }, barBox, label, msg), err);
  model.__statusEl = el;
  const update = () => {
    if (!el.isConnected && model.__statusHome) model.__statusHome.append(el);  // its host was redrawn
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

// The colours of the theme this widget sits in and its width, reported to the kernel (``theme``), which
// colours its plotly charts to match and sizes them to the width; sent again on a change of either.
function reportTheme(model, el) {
  const opaque = (c) => c && c !== "transparent" && !/rgba\(.*,\s*0\)$/.test(c);
  const backgroundOf = (node) => {
    for (let n = node; n && n.nodeType === 1; n = n.parentElement) {
      const c = getComputedStyle(n).backgroundColor;
      if (opaque(c)) return c;
    }
    return "rgb(255, 255, 255)";
  };
  const luminance = (c) => {
    const m = (c.match(/[\d.]+/g) || [255, 255, 255]).map(Number);
    return (0.2126 * m[0] + 0.7152 * m[1] + 0.0722 * m[2]) / 255;
  };
  const send_ = () => {
    if (!el.isConnected) return;
    const css = getComputedStyle(el), background = backgroundOf(el.parentElement || el);
    const light = document.body.dataset.jpThemeLight;
    const width = Math.round(el.getBoundingClientRect().width);
    if (!width) return;  // in a hidden tab: report once shown
    const theme = { dark: light === undefined ? luminance(background) < 0.5 : light === "false", background,
                    foreground: css.getPropertyValue("--jp-ui-font-color1").trim() || css.color,
                    grid: css.getPropertyValue("--jp-border-color2").trim() || "#e0e0e0",
                    name: document.body.dataset.jpThemeName || "", width };
    const old = model.get("theme") || {};
    if (JSON.stringify(old) !== JSON.stringify(theme)) { model.set("theme", theme); model.save_changes(); }
  };
  // once attached and styled; again whenever the theme changes or the widget's width does (its tab is
  // shown, the window or the cell is resized): the charts beside it are sized to that width by the kernel
  requestAnimationFrame(() => setTimeout(send_, 50));
  const obs = new MutationObserver(() => setTimeout(send_, 200));
  obs.observe(document.body, { attributes: true, attributeFilter: ["data-jp-theme-name", "data-jp-theme-light", "class"] });
  let timer = null;
  const sized = new ResizeObserver(() => { clearTimeout(timer); timer = setTimeout(send_, 150); });
  sized.observe(el);
  return () => { obs.disconnect(); sized.disconnect(); };
}
