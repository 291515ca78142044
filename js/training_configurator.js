// TrainingConfigurator: a form rendered from the TrainConfig dataclass, inline validation, estimate, Start.

function render({ model, el }) {
  const root = h("div", { class: "mistudio mistudio-training-configurator", "data-testid": "training-configurator" });
  const basic = h("div", { class: "row" }), advanced = h("div", { class: "row" });
  const inputs = {};
  const dynamic = ["model", "dataset", "hook", "hook_out"];

  const commit = () => {
    const vals = { ...model.get("values") };
    for (const f of model.get("fields")) {
      const inp = inputs[f.name];
      if (!inp) continue;
      if (f.kind === "bool") vals[f.name] = inp.checked;
      else if (f.kind.startsWith("optional") && inp.value === "") vals[f.name] = null;
      else if (f.kind.endsWith("int")) vals[f.name] = inp.value === "" ? null : parseInt(inp.value, 10);
      else if (f.kind.endsWith("float")) vals[f.name] = inp.value === "" ? null : parseFloat(inp.value);
      else vals[f.name] = inp.value;
    }
    model.set("values", vals); model.save_changes();
  };

  const makeInput = (f) => {
    const v = model.get("values")[f.name];
    let inp;
    if (dynamic.includes(f.name)) inp = select([], v ?? "");
    else if (f.kind === "choice") inp = select(f.choices, v);
    else if (f.kind === "bool") inp = h("input", { type: "checkbox", checked: !!v });
    else if (f.kind.endsWith("int") || f.kind.endsWith("float"))
      inp = h("input", { type: "number", value: v ?? "", placeholder: v === null ? "auto" : "", step: f.kind.endsWith("float") ? "any" : "1",
                         min: f.minimum ?? undefined });
    else if (f.kind === "grid")
      inp = h("input", { type: "text", value: typeof v === "string" ? v
                         : Object.entries(v || {}).map(([k, vs]) => `${k}: ${[].concat(vs).join(", ")}`).join("; "),
                         placeholder: "k: 16, 32, 64; architecture: topk, batchtopk" });
    else inp = h("input", { type: "text", value: v ?? "" });
    inp.setAttribute("data-field", f.name);
    inp.addEventListener("change", commit);
    inputs[f.name] = inp;
    const label = f.kind === "bool" ? h("label", { class: "check", title: f.help }, inp, f.label)
                                    : field(f.label, inp, f.help);
    label.setAttribute("data-label-for", f.name);
    wrappers[f.name] = label;
    return label;
  };
  const wrappers = {};
  for (const f of model.get("fields")) (f.basic ? basic : advanced).append(makeInput(f));

  // a setting that only matters for some architectures or optimisers is shown only then (or when the
  // sweep grid tries one of those values)
  const drawVisibility = () => {
    const vals = model.get("values") || {};
    const gridText = typeof vals.sweep === "string" ? vals.sweep : JSON.stringify(vals.sweep || {});
    for (const f of model.get("fields")) {
      const when = f.when || {};
      const shown = Object.entries(when).every(([other, allowed]) =>
        allowed.includes(vals[other]) || (gridText.includes(other) && allowed.some((v) => gridText.includes(v))));
      wrappers[f.name].style.display = shown ? "" : "none";
    }
  };

  const drawChoices = () => {
    const ch = model.get("choices") || {}, vals = model.get("values");
    for (const name of dynamic) {
      const inp = inputs[name]; if (!inp) continue;
      const opts = ch[name] || [];
      inp.replaceChildren(...opts.map((o) => h("option", { value: o, text: o === "" ? "(none)" : o })));
      if (vals[name] !== undefined && vals[name] !== null && !opts.includes(vals[name])) inp.append(h("option", { value: vals[name], text: vals[name] }));
      inp.value = vals[name] ?? "";
    }
  };

  const problems = h("div", { class: "error", "data-testid": "train-problems" });
  const warnings = h("div", { class: "warn", "data-testid": "train-warnings" });
  const estimate = h("div", { class: "kv", "data-testid": "train-estimate" });
  const start = h("button", { text: "Start training", "data-testid": "train-start", on: { click: () => send(model, "start") } });
  const drawCheck = () => {
    const c = model.get("check") || {};
    problems.textContent = (c.problems || []).join("\n");
    warnings.textContent = (c.warnings || []).join("\n");
    estimate.replaceChildren();
    if (c.saes > 1) estimate.append(kv("SAEs (sweep)", fmtInt(c.saes)));
    if (c.d_sae) estimate.append(kv("Latents (d_sae)", fmtInt(c.d_sae)), kv("SAE parameters", fmtInt(c.parameters)),
      kv("Memory (approx.)", `${fmtNum(c.memory_mib, 0)} MiB`), kv("Tokens", fmtInt(c.tokens)),
      kv("Time (CPU estimate)", c.seconds < 120 ? `${fmtNum(c.seconds, 0)} s` : `${fmtNum(c.seconds / 60, 1)} min`));
    start.disabled = (c.problems || []).length > 0 || model.get("status") === "busy";
  };

  root.append(h("section", {}, h("h4", { text: "Train an SAE" }), basic,
    h("details", {}, h("summary", { text: "Advanced settings" }), advanced),
    h("div", { style: { marginTop: "8px" } }, estimate), problems, warnings, h("div", { class: "row", style: { marginTop: "8px" } }, start)),
    statusBar(model));
  el.append(root);
  model.on("change:choices", drawChoices);
  model.on("change:values", drawVisibility);
  model.on("change:check", drawCheck);
  model.on("change:status", drawCheck);
  drawChoices(); drawCheck(); drawVisibility();
}

export default { render };
