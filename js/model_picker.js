// ModelPicker: add, list, architecture with memory estimate, load with quantization, hook point chooser.

function render({ model, el }) {
  const help = model.get("help") || {};
  const root = h("div", { class: "mistudio mistudio-model-picker", "data-testid": "model-picker" });

  const source = h("input", { type: "text", value: "default", "data-testid": "model-source",
                              placeholder: "default | hub id | local folder | file.gguf" });
  const name = h("input", { type: "text", placeholder: "(derived)", style: { minWidth: "120px" } });
  const addBtn = h("button", { text: "Add model", "data-testid": "model-add", on: { click: () =>
    send(model, "add", { source: source.value.trim(), name: name.value.trim() || null }) } });
  const addSec = h("section", {}, h("h4", { text: "Add a model" }),
    h("div", { class: "row" }, field("Source", source, help.source), field("Name", name, help.name), addBtn));

  const list = h("tbody");
  const listSec = h("section", {}, h("h4", { text: "Models in the workspace" }),
    h("table", { "data-testid": "model-list", "data-redrawn": true }, h("thead", {}, h("tr", {},
      ["Name", "Family", "Layers", "d_model", "Parameters", "Source", "Loaded", ""].map((t) => h("th", { text: t })))), list));

  const dtype = select(["auto", "float32", "bfloat16", "float16"], "auto", { "data-testid": "model-dtype" });
  const quant = select([["none", "none"], ["8bit", "8-bit"], ["4bit", "4-bit NF4"]], "none", { "data-testid": "model-quant" });
  const device = select(["auto", "cpu", "cuda", "mps"], "auto");
  const mem = h("span", { "data-testid": "model-memory" });
  const loadBtn = h("button", { text: "Load", "data-testid": "model-load", on: { click: () =>
    send(model, "load", { id: model.get("selected"), dtype: dtype.value, quantization: quant.value, device: device.value }) } });
  const arch = h("div", { class: "kv", "data-testid": "model-arch" });
  const archSec = h("section", {}, h("h4", { text: "Architecture" }), arch,
    h("div", { class: "row", style: { marginTop: "8px" } }, field("dtype", dtype, help.dtype),
      field("Quantization", quant, help.quantization), field("Device", device, help.device), mem, loadBtn));

  const layer = h("input", { type: "range", min: 0, max: 0, value: 0, "data-testid": "hook-layer", style: { width: "220px" } });
  const layerOut = h("b");
  const point = select(["hook_resid_pre", "hook_attn_out", "hook_resid_mid", "ln2.hook_normalized", "hook_mlp_out", "hook_resid_post"],
                       "hook_resid_post", { "data-testid": "hook-point" });
  const hookName = h("code", { "data-testid": "hook-name" });
  const hookSec = h("section", {}, h("h4", { text: "Hook point" }),
    h("div", { class: "row" }, field("Layer", h("span", { class: "row" }, layer, layerOut)), field("Point", point), h("span", {}, "→ ", hookName)),
    h("div", { class: "muted", text: "Where activations are read: the hook an SAE is trained on, reads from and steers at." }));

  root.append(addSec, listSec, archSec, hookSec, statusBar(model));
  el.append(root);
  busyDisables(model, addBtn, loadBtn);

  const drawList = () => {
    list.replaceChildren();
    const sel = model.get("selected");
    for (const m of model.get("models")) {
      const del = h("button", { class: "secondary", text: "Delete", on: { click: (e) => {
        e.stopPropagation(); if (confirm(`Delete ${m.name}?`)) send(model, "delete", { id: m.id }); } } });
      list.append(h("tr", { class: `selectable ${m.id === sel ? "selected" : ""}`, "data-name": m.name,
        on: { click: () => send(model, "select", { id: m.id }) } },
        h("td", { text: m.name }), h("td", { text: m.family }), h("td", { text: fmtInt(m.layers) }),
        h("td", { text: fmtInt(m.d_model) }), h("td", { text: fmtInt(m.parameters) }), h("td", { class: "muted", text: m.source }),
        h("td", { text: m.loaded || "" }), h("td", {}, del)));
    }
    if (!model.get("models").length) list.append(h("tr", {}, h("td", { colspan: 8, class: "muted", text: "No models yet: add 'default' for the embedded SmolLM2-135M-Instruct." })));
  };

  const drawMemory = () => {
    const info = model.get("info") || {}, table = info.memory_table || {};
    const d = dtype.value === "auto" ? info.runs_in || "float32" : dtype.value;
    const gib = table[`${d}/${quant.value}`];
    const auto = dtype.value === "auto" ? ` (auto: ${d} here)` : "";
    mem.textContent = gib === undefined ? "" : `≈ ${fmtNum(gib, 2)} GiB to load${auto}`;
  };

  const drawArch = () => {
    const i = model.get("info") || {};
    arch.replaceChildren();
    if (!i.family) { arch.append(h("span", { class: "muted", text: "Select or add a model." })); return; }
    arch.append(kv("Family", i.family), kv("Architecture", i.architecture), kv("Layers", fmtInt(i.layers)),
      kv("d_model", fmtInt(i.d_model)), kv("d_mlp", fmtInt(i.d_mlp)), kv("Heads (KV)", `${i.heads} (${i.kv_heads})`),
      kv("Vocabulary", fmtInt(i.vocab)), kv("Parameters", fmtInt(i.parameters)), kv("Context", fmtInt(i.context_length)),
      kv("Hook points", i.supported ? "mapped" : "not mapped for this family"));
    layer.max = Math.max((i.layers || 1) - 1, 0);
    point.querySelector('option[value="hook_resid_mid"]').disabled = !!i.parallel_blocks;
    drawMemory();
  };

  const drawHook = () => {
    const hk = model.get("hook") || "";
    const m = /^blocks\.(\d+)\.(.+)$/.exec(hk);
    if (m) { layer.value = m[1]; point.value = m[2]; }
    layerOut.textContent = layer.value;
    hookName.textContent = hk;
  };
  const setHook = () => {
    const name = `blocks.${layer.value}.${point.value}`;
    if ((model.get("hooks") || []).includes(name)) { model.set("hook", name); model.save_changes(); }
    drawHook();
  };
  layer.addEventListener("input", setHook);
  point.addEventListener("change", setHook);
  dtype.addEventListener("change", drawMemory);
  quant.addEventListener("change", drawMemory);

  model.on("change:models", drawList);
  model.on("change:selected", drawList);
  model.on("change:info", drawArch);
  model.on("change:hook", drawHook);
  drawList(); drawArch(); drawHook();
}

export default { render };
