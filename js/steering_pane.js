// SteeringPane: features with strength sliders, unsteered and steered continuations side by side (streamed),
// changed tokens highlighted, metrics, sweeps and presets. All text goes in through textContent.

function render({ model, el }) {
  const root = h("div", { class: "mistudio mistudio-steering", "data-testid": "steering-pane" });
  const saeSel = h("select", { "data-testid": "st-sae" });
  saeSel.addEventListener("change", () => send(model, "select", { id: saeSel.value }));
  const search = h("input", { type: "search", placeholder: "find a feature: label text or index", "data-testid": "st-search" });
  search.addEventListener("keydown", (e) => { if (e.key === "Enter") send(model, "search", { query: search.value }); });
  const found = h("div", { class: "row wrap", "data-testid": "st-found" });
  const chosen = h("div", { class: "st-chosen", "data-testid": "st-chosen" });
  const wide = h("input", { type: "checkbox", "data-testid": "st-wide" });
  const prompt = h("textarea", { rows: 2, placeholder: "Prompt, e.g. Tell me about your day.", "data-testid": "st-prompt" });
  prompt.addEventListener("change", () => model.set("prompt", prompt.value) || model.save_changes());
  const method = select(["add", "orthogonal", "cap", "clamp", "ablate"], "add", { "data-testid": "st-method" });
  const maxTok = h("input", { type: "number", min: 1, value: 40, "data-testid": "st-max-tokens" });
  const temp = h("input", { type: "number", min: 0, step: 0.1, value: 0, "data-testid": "st-temperature" });
  const seed = h("input", { type: "number", value: 0, "data-testid": "st-seed" });
  const mult = h("input", { type: "number", step: 0.1, value: 1, "data-testid": "st-multiplier" });
  const sendSettings = () => send(model, "settings", { method: method.value, max_tokens: Number(maxTok.value), temperature: Number(temp.value),
                                                      seed: Number(seed.value), multiplier: Number(mult.value) });
  for (const x of [method, maxTok, temp, seed, mult]) x.addEventListener("change", sendSettings);
  const gen = h("button", { text: "Generate", "data-testid": "st-generate", on: { click: () => send(model, "generate", { prompt: prompt.value }) } });
  const stop = h("button", { class: "secondary", text: "Stop", "data-testid": "st-stop", on: { click: () => send(model, "stop") } });
  const left = h("div", { class: "st-out", "data-testid": "st-unsteered" }), right = h("div", { class: "st-out", "data-testid": "st-steered" });
  const metrics = h("div", { class: "kv", "data-testid": "st-metrics" });
  const sweepIn = h("input", { type: "text", value: "0, 20, 50, 100", "data-testid": "st-sweep-strengths", style: { minWidth: "160px" } });
  const sweepBtn = h("button", { class: "secondary", text: "Sweep first feature", "data-testid": "st-sweep",
    on: { click: () => send(model, "sweep", { strengths: sweepIn.value.split(",").map(Number).filter((x) => Number.isFinite(x)) }) } });
  const sweepOut = h("table", { "data-testid": "st-sweep-table" });
  const presetName = h("input", { type: "text", placeholder: "preset name", "data-testid": "st-preset-name", style: { minWidth: "140px" } });
  const presetSel = h("select", { "data-testid": "st-presets" });
  const presetSave = h("button", { class: "secondary", text: "Save preset", on: { click: () => presetName.value.trim() && send(model, "save_preset", { name: presetName.value.trim() }) } });
  const presetLoad = h("button", { class: "secondary", text: "Load", on: { click: () => presetSel.value && send(model, "load_preset", { name: presetSel.value }) } });
  busyDisables(model, gen, sweepBtn);
  root.append(
    h("div", { class: "row" }, h("b", { text: "SAE" }), saeSel, search, h("label", { class: "check" }, wide, "Neuronpedia range (−300…300)")),
    found, chosen,
    h("div", { class: "row" }, prompt),
    h("div", { class: "row" }, field("Method", method), field("Max tokens", maxTok), field("Temperature", temp), field("Seed", seed),
      field("Multiplier", mult), gen, stop),
    h("div", { class: "st-grid" }, h("div", {}, h("h4", { text: "Unsteered" }), left), h("div", {}, h("h4", { text: "Steered" }), right)),
    metrics,
    h("section", {}, h("h4", { text: "Sweep and presets" }), h("div", { class: "row" }, sweepIn, sweepBtn, presetName, presetSave, presetSel, presetLoad), sweepOut),
    statusBar(model));
  el.append(root);

  const drawHeader = () => {
    const saes = model.get("saes") || [];
    saeSel.replaceChildren(...(saes.length ? saes.map((s) => h("option", { value: s.id, text: s.name })) : [h("option", { value: "", text: "(no SAEs yet)" })]));
    saeSel.value = model.get("sae");
    const st = model.get("settings") || {};
    method.value = st.method || "add"; maxTok.value = st.max_tokens ?? 40; temp.value = st.temperature ?? 0; seed.value = st.seed ?? 0; mult.value = st.multiplier ?? 1;
    if (document.activeElement !== prompt) prompt.value = model.get("prompt") || "";
    const presets = model.get("presets") || [];
    presetSel.replaceChildren(h("option", { value: "", text: presets.length ? "(presets)" : "(no presets)" }), ...presets.map((p) => h("option", { value: p.name, text: p.name })));
  };
  const drawFound = () => {
    found.replaceChildren(...(model.get("found") || []).map((f) => h("button", { class: "link", "data-index": f.index,
      text: `+ ${f.index}${f.label ? ` ${f.label}` : ""}`, on: { click: () => send(model, "add", { index: f.index }) } })));
  };
  const drawChosen = () => {
    chosen.replaceChildren();
    for (const c of model.get("chosen") || []) {
      const lim = wide.checked || !c.max ? 300 : Math.max(10 * c.max, 1);
      const slider = h("input", { type: "range", min: -lim, max: lim, step: lim / 200, value: c.strength, "data-testid": "st-slider", "data-index": c.index });
      const num = h("input", { type: "number", value: c.strength, step: "any", "data-testid": "st-strength", "data-index": c.index });
      slider.addEventListener("input", () => { num.value = slider.value; });
      slider.addEventListener("change", () => send(model, "strength", { index: c.index, strength: Number(slider.value) }));
      num.addEventListener("change", () => send(model, "strength", { index: c.index, strength: Number(num.value) }));
      chosen.append(h("div", { class: "row", "data-testid": "st-feature", "data-index": c.index },
        h("b", { text: `#${c.index}` }), h("span", { class: "muted", text: c.label || (c.max ? `max ${c.max.toFixed(2)}` : "") }),
        slider, num, h("button", { class: "link", text: "remove", on: { click: () => send(model, "remove", { index: c.index }) } })));
    }
    if (!chosen.children.length) chosen.append(h("div", { class: "muted", text: "No feature yet: search above, or use “Steer with this” in the feature browser." }));
  };
  const drawOut = () => {
    const r = model.get("result") || {}, diff = r.diff || null;
    const paint = (box, tokens, side) => {
      box.replaceChildren();
      if (diff) {
        for (const op of diff) for (const t of op[side]) box.append(h("span", { class: "stok" + (op.op === "equal" ? "" : side === "steered" ? " added" : " removed"), text: t }));
      } else for (const t of tokens) box.append(h("span", { class: "stok", text: t }));
    };
    paint(left, model.get("unsteered") || [], "unsteered");
    paint(right, model.get("steered") || [], "steered");
    metrics.replaceChildren();
    const m = r.metrics;
    if (m) {
      metrics.append(kv("KL (steered ‖ unsteered)", fmtNum(m.kl_mean, 3)));
      if (m.perplexity_steered !== undefined) metrics.append(kv("perplexity", `${fmtNum(m.perplexity_unsteered, 2)} → ${fmtNum(m.perplexity_steered, 2)}`));
      for (const [i, v] of Object.entries(m.feature_activation || {})) metrics.append(kv(`feature ${i} activation`, `${fmtNum(v.before, 2)} → ${fmtNum(v.after, 2)}`));
      if (r.interrupted) metrics.append(kv("generation", "stopped"));
    }
  };
  const drawSweep = () => {
    const rows = model.get("sweep_rows") || [];
    sweepOut.replaceChildren(...(rows.length ? [h("tr", {}, ["strength", "KL", "perplexity", "steered text"].map((x) => h("th", { text: x })))] : []),
      ...rows.map((r) => h("tr", {}, h("td", { text: fmtNum(r.strength, 2) }), h("td", { text: fmtNum(r.kl_mean, 3) }),
        h("td", { text: fmtNum(r.perplexity, 2) }), h("td", { text: r.steered }))));
  };
  wide.addEventListener("change", drawChosen);
  for (const k of ["saes", "sae", "settings", "prompt", "presets"]) model.on(`change:${k}`, drawHeader);
  model.on("change:found", drawFound);
  model.on("change:chosen", drawChosen);
  for (const k of ["unsteered", "steered", "result"]) model.on(`change:${k}`, drawOut);
  model.on("change:sweep_rows", drawSweep);
  drawHeader(); drawFound(); drawChosen(); drawOut(); drawSweep();
}

export default { render };
