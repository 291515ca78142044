// SAELibrary: trained and imported SAEs with their final metrics; rename, delete, open in a tab;
// import, export (SAELens / Neuronpedia) and compare two SAEs. All text goes in through textContent.

// "blocks.10.hook_resid_post" -> "L10 resid_post": the layer and the kind of activation fit the column,
// where a cut full name loses the part that tells resid_post from mlp_out (the full name is the title).
function shortHook(hook) {
  const m = /^blocks\.(\d+)\.hook_(.+)$/.exec(hook || "");
  return m ? `L${m[1]} ${m[2]}` : hook || "";
}

function render({ model, el }) {
  const root = h("div", { class: "mistudio mistudio-sae-library", "data-testid": "sae-library" });
  const body = h("tbody");
  // import
  const src = h("input", { type: "text", placeholder: "folder, params.npz or hf://OWNER/REPO/PATH", "data-testid": "lib-import-source", style: { minWidth: "320px" } });
  const hook = h("input", { type: "text", placeholder: "hook (if the files do not say)", "data-testid": "lib-import-hook" });
  const iname = h("input", { type: "text", placeholder: "name (optional)", "data-testid": "lib-import-name" });
  const importBtn = h("button", { text: "Import", "data-testid": "lib-import", on: { click: () => src.value.trim() &&
    send(model, "import", { source: src.value.trim(), hook: hook.value, name: iname.value }) } });
  // export
  const exSae = h("select", { "data-testid": "lib-export-sae" });
  const exFmt = select(["saelens", "neuronpedia"], "saelens", { "data-testid": "lib-export-format" });
  const exOut = h("input", { type: "text", placeholder: "folder (default: workspace/exports/NAME-FORMAT)", "data-testid": "lib-export-out", style: { minWidth: "320px" } });
  const exReplace = h("input", { type: "checkbox", "data-testid": "lib-export-replace" });
  const exReplaceLabel = h("label", { title: "replace the folder when it holds an earlier export of mistudio (never other files)" }, exReplace, " replace an earlier export");
  const exBtn = h("button", { text: "Export", "data-testid": "lib-export", on: { click: () => exSae.value &&
    send(model, "export", { id: exSae.value, format: exFmt.value, out: exOut.value, overwrite: exReplace.checked }) } });
  const exDone = h("div", { class: "muted", "data-testid": "lib-exported" });
  // share
  const shSae = h("select", { "data-testid": "lib-share-sae" });
  const shRepo = h("input", { type: "text", placeholder: "OWNER/NAME on the Hugging Face hub", "data-testid": "lib-share-repo" });
  const shUpload = h("input", { type: "checkbox", checked: true, "data-testid": "lib-share-upload" });
  const shExtract = h("input", { type: "checkbox", "data-testid": "lib-share-extract" });
  const shBtn = h("button", { text: "Share", "data-testid": "lib-share", on: { click: () => shSae.value && shRepo.value.trim() &&
    send(model, "share", { id: shSae.value, repo: shRepo.value.trim(), upload: shUpload.checked, extract: shExtract.checked }) } });
  const shDone = h("pre", { class: "muted", "data-testid": "lib-shared", style: { whiteSpace: "pre-wrap" } });
  // compare
  const cmpA = h("select", { "data-testid": "lib-compare-a" }), cmpB = h("select", { "data-testid": "lib-compare-b" });
  const cmpBtn = h("button", { text: "Compare", "data-testid": "lib-compare", on: { click: () => cmpA.value && cmpB.value &&
    send(model, "compare", { a: cmpA.value, b: cmpB.value }) } });
  const cmpOut = h("div", { "data-testid": "lib-comparison" });
  busyDisables(model, importBtn, exBtn, shBtn, cmpBtn);
  root.append(
    h("section", {}, h("h4", { text: "SAE library" }),
      // a fixed layout: the table is never wider than the widget (long names are cut with an ellipsis
      // and shown whole on hover; the actions wrap onto a second line)
      h("div", { class: "table-scroll", "data-testid": "lib-table-box" }, h("table", { class: "lib", "data-redrawn": true },
        h("colgroup", {}, ["name", "arch", "hook", "num", "num", "num", "num", "num", "num", "source", "actions"].map((c) => h("col", { class: `c-${c}` }))),
        h("thead", {}, h("tr", {}, [["Name"], ["Architecture"], ["Hook"], ["Latents"], ["EV", "explained variance"], ["L0"],
          ["Dead", "dead latents"], ["CE rec.", "CE loss recovered"], ["Tokens", "tokens trained"], ["Source"], [""]]
          .map(([t, full]) => h("th", { text: t, title: full || t })))), body))),
    h("section", {}, h("h4", { text: "Import an SAE" }), h("div", { class: "row wrap" }, src, hook, iname, importBtn)),
    h("section", {}, h("h4", { text: "Export" }), h("div", { class: "row wrap" }, exSae, exFmt, exOut, exReplaceLabel, exBtn), exDone),
    h("section", {}, h("h4", { text: "Share (hub, SAELens list, Neuronpedia)" }),
      h("div", { class: "row wrap" }, shSae, shRepo, h("label", { class: "check" }, shUpload, "upload when a token and the network are there"),
        h("label", { class: "check" }, shExtract, "extract first if needed"), shBtn), shDone),
    h("section", {}, h("h4", { text: "Compare two SAEs" }), h("div", { class: "row wrap" }, cmpA, h("span", { text: "vs" }), cmpB, cmpBtn), cmpOut),
    statusBar(model));
  el.append(root);
  const pct = (v) => (v === null || v === undefined ? "–" : `${(100 * v).toFixed(1)}%`);
  const fillSelect = (sel, saes, fallback) => {
    const keep = sel.value;
    sel.replaceChildren(...saes.map((s) => h("option", { value: s.id, text: `${s.name} (${s.hook}, ${fmtInt(s.d_sae)})` })));
    if (saes.some((s) => s.id === keep)) sel.value = keep; else if (fallback !== undefined && saes[fallback]) sel.value = saes[fallback].id;
  };
  const draw = () => {
    body.replaceChildren();
    const saes = model.get("saes");
    for (const s of saes) {
      const feats = h("button", { class: "secondary", text: "Features", on: { click: () => send(model, "open", { id: s.id, target: "Features" }) } });
      const steer = h("button", { class: "secondary", text: "Steering", on: { click: () => send(model, "open", { id: s.id, target: "Steering" }) } });
      // the rarer actions in one menu, so that a row's buttons stay on one line
      const more = h("select", { class: "secondary", title: "more actions", "data-testid": "lib-row-more", on: { change: () => {
        const act = more.value; more.value = "";
        if (act === "export") { exSae.value = s.id; exOut.value = ""; exOut.focus(); }
        if (act === "rename") { const name = prompt("New name", s.name); if (name && name.trim()) send(model, "rename", { id: s.id, name: name.trim() }); }
        if (act === "delete" && confirm(`Delete ${s.name}?`)) send(model, "delete", { id: s.id });
      } } }, [["", "More…"], ["export", "Export…"], ["rename", "Rename…"], ["delete", "Delete…"]].map(([v, t]) => h("option", { value: v, text: t })));
      body.append(h("tr", { "data-name": s.name, title: s.path },
        h("td", { class: "cut", text: s.name, title: s.name }), h("td", { class: "cut", text: `${s.architecture}${s.k ? ` k=${s.k}` : ""}` }),
        h("td", { class: "cut", text: shortHook(s.hook), title: s.hook }),
        h("td", { text: fmtInt(s.d_sae) }), h("td", { text: fmtNum(s.explained_variance, 3) }), h("td", { text: fmtNum(s.l0, 1) }),
        h("td", { text: pct(s.dead_fraction) }), h("td", { text: fmtNum(s.ce_recovered, 3) }), h("td", { text: fmtInt(s.tokens) }),
        h("td", { class: "cut", text: s.source === "imported" ? `imported (${s.format})` : s.source }),
        h("td", { class: "actions" }, h("span", { class: "row" }, feats, steer, more))));
    }
    if (!saes.length) body.append(h("tr", {}, h("td", { colspan: 11, class: "muted", text: "No SAEs yet: train one in the Training tab, or import one below." })));
    fillSelect(exSae, saes, saes.length - 1);
    fillSelect(shSae, saes, saes.length - 1);
    fillSelect(cmpA, saes, saes.length - 1);
    fillSelect(cmpB, saes, saes.length - 2);
  };
  const drawExported = () => {
    const r = model.get("exported") || {};
    exDone.textContent = r.path ? `Last export: ${r.format} → ${r.path}` : "";
  };
  const drawShared = () => { shDone.textContent = (model.get("shared") || {}).text || ""; };
  const drawComparison = () => {
    const c = model.get("comparison") || {}, s = c.summary;
    cmpOut.replaceChildren();
    if (!s) return;
    cmpOut.append(
      h("p", { "data-testid": "lib-comparison-sentence", text: c.sentence ? `Best match: ${c.sentence}.` : "No pairs." }),
      h("div", { class: "kv" }, kv("pairs", `${fmtInt(s.matched)} (${s.method})`), kv("mean cosine", fmtNum(s.mean_matched_cosine, 3)),
        kv("above 0.9", fmtInt(s["matched_above_0.9"])), kv("above 0.7", fmtInt(s["matched_above_0.7"]))),
      ...(s.warnings || []).map((w) => h("div", { class: "muted", text: `Note: ${w}` })),
      histogram(c.histogram || [], Array.from({ length: 21 }, (_, i) => -1 + i * 0.1), { xlabel: "cosine of matched pairs", digits: 1 }),
      h("table", { "data-testid": "lib-comparison-pairs" }, h("tr", {}, [s.name_a, s.name_b, "cosine", "labels"].map((t) => h("th", { text: t }))),
        ...(c.pairs || []).slice(0, 20).map((p) => h("tr", {}, h("td", { text: String(p.a) }), h("td", { text: String(p.b) }),
          h("td", { text: fmtNum(p.cosine, 3) }), h("td", { text: [p.label_a, p.label_b].filter(Boolean).join(" | ") })))));
  };
  model.on("change:saes", draw);
  model.on("change:exported", drawExported);
  model.on("change:comparison", drawComparison);
  model.on("change:shared", drawShared);
  draw(); drawExported(); drawShared(); drawComparison();
}

export default { render };
