// SteeringPane: features with strength sliders, unsteered and steered continuations side by side (streamed),
// changed tokens highlighted, metrics, sweeps and presets. All text goes in through textContent.

function render({ model, el }) {
  const root = h("div", { class: "mistudio mistudio-steering", "data-testid": "steering-pane" });
  const saeSel = h("select", { "data-testid": "st-sae" });
  saeSel.addEventListener("change", () => send(model, "select", { id: saeSel.value }));
  const search = h("input", { type: "search", placeholder: "find a feature: a label word, a token it promotes, or its number", "data-testid": "st-search", style: { minWidth: "340px" },
                              title: "matches labels, the tokens a feature promotes (logit lens), or a feature index" });
  // searched as you type (after a short pause), and on Enter
  let searchTimer = null;
  search.addEventListener("input", () => { clearTimeout(searchTimer); searchTimer = setTimeout(() => send(model, "search", { query: search.value }), 300); });
  search.addEventListener("keydown", (e) => { if (e.key === "Enter") { clearTimeout(searchTimer); send(model, "search", { query: search.value }); } });
  const searchBtn = h("button", { class: "secondary", text: "Search", "data-testid": "st-search-go", on: { click: () => send(model, "search", { query: search.value }) } });
  const cText = h("textarea", { rows: 2, placeholder: "text with the trait, one per line, e.g. WHY ARE YOU SHOUTING", "data-testid": "st-contrast-text" });
  const cOther = h("textarea", { rows: 2, placeholder: "compared with, one per line (empty: the same texts in ordinary case)", "data-testid": "st-contrast-other" });
  const cBtn = h("button", { class: "secondary", text: "Find by contrast", "data-testid": "st-contrast-go",
    on: { click: () => cText.value.trim() && send(model, "contrast", { text: cText.value, contrast: cOther.value }) } });
  const bound = model.get("fluency_bound") || {};
  const maxPpl = h("input", { type: "number", min: 1, step: 1, value: bound.max_perplexity, style: { width: "4em" }, "data-testid": "st-auto-ppl",
                              title: "the steered text, lower-cased and read by the unsteered model: its perplexity at most this many times the unsteered text's" });
  const maxRep = h("input", { type: "number", min: 0.05, max: 1, step: 0.05, value: bound.max_repetition, style: { width: "4em" }, "data-testid": "st-auto-rep",
                              title: "share of the steered text's word trigrams that repeat an earlier one" });
  const autoOut = h("div", { "data-testid": "st-auto" });
  const found = h("div", { class: "row wrap", "data-testid": "st-found", "data-redrawn": true });
  const searchHint = h("div", { class: "muted", "data-testid": "st-search-hint",
    text: "Search as you type: a label word (“capital”), a token a feature promotes (“ the”), or a feature number; or find features by contrast below." });
  const chosen = h("div", { class: "st-chosen", "data-testid": "st-chosen", "data-redrawn": true });
  const wide = h("input", { type: "checkbox", "data-testid": "st-wide" });
  const prompt = h("textarea", { rows: 2, placeholder: "Prompt, e.g. Tell me about your day.", "data-testid": "st-prompt" });
  prompt.addEventListener("change", () => model.set("prompt", prompt.value) || model.save_changes());
  const method = select(["add", "orthogonal", "cap", "clamp", "ablate"], "add", { "data-testid": "st-method" });
  const positions = select(["all", "generated"], "all", { "data-testid": "st-positions",
    title: "all: the edit applies at the prompt's positions and the answer's; generated: only where the answer is written, so the question is read as asked" });
  const maxTok = h("input", { type: "number", min: 1, value: 40, "data-testid": "st-max-tokens" });
  const penalty = h("input", { type: "number", min: 0, step: 0.1, value: 0, "data-testid": "st-frequency-penalty",
    title: "subtracted from a token's logit for each time it was already written (against loops)" });
  const temp = h("input", { type: "number", min: 0, step: 0.1, value: 0, "data-testid": "st-temperature" });
  const seed = h("input", { type: "number", value: 0, "data-testid": "st-seed" });
  const mult = h("input", { type: "number", step: 0.1, value: 1, "data-testid": "st-multiplier" });
  const sendSettings = () => send(model, "settings", { method: method.value, positions: positions.value, max_tokens: Number(maxTok.value),
                                                      temperature: Number(temp.value), frequency_penalty: Number(penalty.value),
                                                      seed: Number(seed.value), multiplier: Number(mult.value) });
  for (const x of [method, positions, maxTok, temp, penalty, seed, mult]) x.addEventListener("change", sendSettings);
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
  busyDisables(model, gen, sweepBtn, cBtn);
  root.append(
    h("div", { class: "row" }, h("b", { text: "SAE" }), saeSel, search, searchBtn, h("label", { class: "check" }, wide, "Neuronpedia range (−300…300)")),
    searchHint,
    h("div", { class: "row" }, cText, cOther, cBtn),
    found, chosen,
    h("div", { class: "row muted", "data-testid": "st-fluency-rule", title: bound.rule || "" }, "Auto strength: the largest whose text stays fluent — lower-cased perplexity ≤", maxPpl,
      "× the unsteered text's, repeated word trigrams ≤", maxRep, `, unknown words ≤ ${Math.round(100 * (bound.max_invented || 0))}%`),
    autoOut,
    h("div", { class: "row" }, prompt),
    h("div", { class: "row" }, field("Method", method), field("Where", positions), field("Max tokens", maxTok), field("Temperature", temp),
      field("Freq. penalty", penalty), field("Seed", seed), field("Multiplier", mult), gen, stop),
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
    method.value = st.method || "add"; positions.value = st.positions || "all"; maxTok.value = st.max_tokens ?? 40; temp.value = st.temperature ?? 0;
    penalty.value = st.frequency_penalty ?? 0; seed.value = st.seed ?? 0; mult.value = st.multiplier ?? 1;
    if (document.activeElement !== prompt) prompt.value = model.get("prompt") || "";
    const presets = model.get("presets") || [];
    presetSel.replaceChildren(h("option", { value: "", text: presets.length ? "(presets)" : "(no presets)" }), ...presets.map((p) => h("option", { value: p.name, text: p.name })));
  };
  const why = (f) => f.match === "contrast" ? ` · fires on ${(100 * f.rate).toFixed(0)}% vs ${(100 * f.rate_contrast).toFixed(0)}% of tokens`
    : f.match === "logits" ? " · promotes that token" : f.match === "label" ? " · its label matches" : f.match === "index" ? " · that number" : "";
  const drawFound = () => {
    const rows = model.get("found") || [];
    const q = search.value.trim();
    found.replaceChildren(...(rows.length ? [h("span", { class: "muted", text: "click to add:" })]
      : q && model.get("status") !== "busy" ? [h("span", { class: "muted", text: `No feature matches “${q}” by label, promoted token or number.` })] : []), ...rows.map((f) => h("button", { class: "link", "data-index": f.index,
      title: f.match === "contrast" ? `contrast score ${f.score.toFixed(2)}, decoder alignment ${f.alignment.toFixed(2)}` : `matched by ${f.match}`,
      text: `+ ${f.suggested ? "★ " : ""}${f.index}${f.label ? ` ${f.label}` : ""}${why(f)}`, on: { click: () => { search.value = ""; send(model, "add", { index: f.index }); } } })));
  };
  const drawAuto = () => {
    const a = model.get("auto") || {};
    autoOut.replaceChildren();
    if (!a.rows) return;
    const head = a.running ? `feature ${a.index}: trying strengths…` : a.strength !== null && a.strength !== undefined
      ? `feature ${a.index}: strength ${fmtNum(a.strength, 2)} (${(100 * a.relative).toFixed(0)}% of the residual norm ${fmtNum(a.residual_norm, 0)}) is the largest that stays fluent`
      : (a.note || "");
    const pct = (x) => `${(100 * x).toFixed(0)}%`;
    autoOut.append(h("div", { class: a.strength === null && !a.running ? "warn" : "muted", text: head }));
    if (a.rule) autoOut.append(h("div", { class: "muted", "data-testid": "st-auto-rule", text: a.rule }));
    if (a.text) autoOut.append(h("div", { "data-testid": "st-auto-chosen" }, h("span", { class: "muted", text: "chosen text: " }), h("span", { text: a.text })));
    autoOut.append(h("table", { class: "table", "data-testid": "st-auto-table" }, h("tr", {}, ["strength", "of residual norm", "lower-cased perplexity", "repeated", "unknown words", "fluent", "steered text"].map((x) => h("th", { text: x }))),
        ...a.rows.map((r) => h("tr", { class: r.strength === a.strength ? "chosen" : "" }, h("td", { class: "num", text: fmtNum(r.strength, 2) }), h("td", { class: "num", text: pct(r.relative) }),
          h("td", { class: "num", text: fmtNum(r.perplexity, 1) }), h("td", { class: "num", text: pct(r.repetition) }), h("td", { class: "num", text: pct(r.invented || 0) }),
          h("td", { text: r.fluent ? "yes" : "no" }), h("td", { text: r.text })))));
  };
  const drawChosen = () => {
    chosen.replaceChildren();
    for (const c of model.get("chosen") || []) {
      const lim = wide.checked || !c.max ? 300 : Math.max(10 * c.max, 1);
      const slider = h("input", { type: "range", min: -lim, max: lim, step: lim / 200, value: c.strength, "data-testid": "st-slider", "data-index": c.index });
      const num = h("input", { type: "number", value: +Number(c.strength).toFixed(3), step: "any", "data-testid": "st-strength", "data-index": c.index });
      slider.addEventListener("input", () => { num.value = slider.value; });
      slider.addEventListener("change", () => send(model, "strength", { index: c.index, strength: Number(slider.value) }));
      num.addEventListener("change", () => send(model, "strength", { index: c.index, strength: Number(num.value) }));
      const auto = h("button", { class: "secondary", text: "Auto", "data-testid": "st-auto-go", "data-index": c.index,
        title: "try strengths from weak to strong and keep the largest whose text stays fluent",
        on: { click: () => send(model, "auto", { index: c.index, prompt: prompt.value, max_perplexity: Number(maxPpl.value), max_repetition: Number(maxRep.value) }) } });
      auto.disabled = model.get("status") === "busy";
      auto.classList.add("st-auto-btn");
      chosen.append(h("div", { class: "row", "data-testid": "st-feature", "data-index": c.index },
        h("b", { text: `#${c.index}` }), h("span", { class: "muted", text: c.label || (c.max ? `max ${c.max.toFixed(2)}` : "") }),
        slider, num, h("span", { class: "muted", "data-testid": "st-relative", text: c.relative !== null && c.relative !== undefined ? `≈ ${(100 * c.relative).toFixed(0)}% of the residual norm` : "" }),
        auto, h("button", { class: "link", text: "remove", on: { click: () => send(model, "remove", { index: c.index }) } })));
    }
    if (!chosen.children.length) chosen.append(h("div", { class: "muted", text: "No feature yet: search above, or use “Steer with this” in the feature browser." }));
  };
  const drawOut = () => {
    const r = model.get("result") || {}, diff = r.diff || null;
    // the prompt, then the continuation; tokens that differ from the other side are tinted (never
    // struck through), so both texts stay readable
    const promptText = (model.get("result") || {}).prompt || model.get("prompt") || "";
    const paint = (box, tokens, side) => {
      box.replaceChildren();
      if (promptText && (tokens.length || diff)) box.append(h("span", { class: "st-prompt-echo", text: promptText + " " }));
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
      if (m.similarity !== null && m.similarity !== undefined) {  // 1: the same meaning
        const sim = kv("meaning kept (cosine)", fmtNum(m.similarity, 3));
        sim.dataset.testid = "st-similarity";
        sim.title = "cosine of the two texts' mean-pooled hidden states, read by the unsteered model";
        metrics.append(sim);
      }
      const f = m.fluency;
      if (f) {
        const one = (x) => `perplexity ${fmtNum(x.perplexity, 1)}, repeated ${(100 * x.repetition).toFixed(0)}%, unknown words ${(100 * x.invented).toFixed(0)}%`;
        const verdict = h("span", { "data-testid": "st-fluency", title: f.rule, class: f.fluent ? "" : "warn", text: `${one(f.unsteered)} → ${one(f.steered)}: ${f.fluent ? "fluent" : "not fluent"}` });
        metrics.append(h("div", { style: { gridColumn: "1 / -1" } }, h("span", { class: "muted", text: "fluency (lower-cased) " }), verdict));
      }
      for (const [i, v] of Object.entries(m.feature_activation || {})) metrics.append(kv(`feature ${i} activation`, `${fmtNum(v.before, 2)} → ${fmtNum(v.after, 2)}`));
      // the steer read at a later layer through the SAE there: each steered feature's nearest later feature
      // (decoder cosine; below dn.no_match no counterpart) and the later features it raised most
      const dn = m.downstream;
      if (dn) {
        const where = dn.hook.replace(/^blocks\.(\d+)\.hook_/, "L$1 ");
        for (const [i, x] of Object.entries(dn.matched)) {
          const row = kv(`${where}: feature ${x.index}`, `${fmtNum(x.before, 2)} → ${fmtNum(x.after, 2)}${x.cosine < dn.no_match ? " (no close match)" : ""}`);
          row.dataset.testid = "st-downstream";
          row.title = `read through ${dn.name}: the feature whose decoder direction is nearest feature ${i}'s (cosine ${fmtNum(x.cosine, 2)}), mean activation over the continuation`;
          metrics.append(row);
        }
        const up = dn.most_raised.map((x) => `${x.index} (${fmtNum(x.before, 2)} → ${fmtNum(x.after, 2)})`).join(", ");
        const raised = kv(`${where}: raised most`, up || "none");
        raised.dataset.testid = "st-downstream-raised";
        metrics.append(raised);
      }
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
  model.on("change:status", () => {
    drawFound();
    // the Auto buttons follow the busy state (a finished job makes them usable again)
    for (const b of chosen.querySelectorAll(".st-auto-btn")) b.disabled = model.get("status") === "busy";
  });
  model.on("change:sweep_rows", drawSweep);
  model.on("change:auto", drawAuto);
  drawHeader(); drawFound(); drawChosen(); drawOut(); drawSweep(); drawAuto();
}

export default { render };
