// DatasetPicker: add a dataset, tokenize it with a model, statistics with a length histogram, preview.

function render({ model, el }) {
  const help = model.get("help") || {};
  const root = h("div", { class: "mistudio mistudio-dataset-picker", "data-testid": "dataset-picker" });

  // -- add --------------------------------------------------------------------------------
  const source = h("input", { type: "text", value: "default", "data-testid": "ds-source",
                              placeholder: "default | hub id (user/name) | local path" });
  const split = h("input", { type: "text", value: "train", style: { minWidth: "80px", width: "80px" } });
  const samples = h("input", { type: "number", min: 1, placeholder: "all" });
  const name = h("input", { type: "text", placeholder: "(derived)", style: { minWidth: "120px" } });
  const addBtn = h("button", { text: "Add dataset", "data-testid": "ds-add", on: { click: () =>
    send(model, "add", { source: source.value.trim(), split: split.value.trim(), samples: samples.value || null,
                         name: name.value.trim() || null }) } });
  const addSec = h("section", {}, h("h4", { text: "Add a dataset" }),
    h("div", { class: "row" }, field("Source", source, help.source), field("Split", split, help.split),
      field("Samples", samples, help.samples), field("Name", name, help.name), addBtn));

  // -- list -------------------------------------------------------------------------------
  const list = h("tbody");
  const listSec = h("section", {}, h("h4", { text: "Datasets in the workspace" }),
    h("table", { "data-testid": "ds-list", "data-redrawn": true }, h("thead", {}, h("tr", {},
      ["Name", "Documents", "Source", "Licence", "Tokenizations", ""].map((t) => h("th", { text: t })))), list));

  // -- tokenize ---------------------------------------------------------------------------
  const modelSel = h("select", { "data-testid": "ds-model" });
  const ctx = h("input", { type: "number", value: 128, min: 2, "data-testid": "ds-context" });
  const minLen = h("input", { type: "number", value: 1, min: 0 });
  const maxTok = h("input", { type: "number", min: 1, placeholder: "all" });
  const bos = h("input", { type: "checkbox", checked: true });
  const special = h("input", { type: "checkbox" });
  const sep = select([["eos", "EOS"], ["bos", "BOS"], ["none", "none"]], "eos");
  const target = h("span", { class: "muted" });
  const tokBtn = h("button", { text: "Tokenize", "data-testid": "ds-tokenize", on: { click: () =>
    send(model, "tokenize", { dataset: model.get("selected"), model: modelSel.value, context_size: ctx.value,
      min_length: minLen.value, max_tokens: maxTok.value || null, prepend_bos: bos.checked,
      special_tokens: special.checked, separator: sep.value }) } });
  const tokSec = h("section", {}, h("h4", {}, "Tokenize ", target),
    h("div", { class: "row" }, field("Model", modelSel, "the tokenizer of this model is used"),
      field("Context size", ctx, help.context_size), field("Min. length (tokens)", minLen, help.min_length),
      field("Max. tokens", maxTok, help.max_tokens), field("Separator", sep, help.separator),
      h("label", { class: "check", title: help.prepend_bos }, bos, "prepend BOS"),
      h("label", { class: "check", title: help.special_tokens }, special, "parse special tokens"), tokBtn));

  // -- stats and preview ------------------------------------------------------------------
  const stats = h("section", { "data-testid": "ds-stats" });
  const preview = h("section", { "data-testid": "ds-preview" });

  root.append(addSec, listSec, tokSec, statusBar(model), stats, preview);
  el.append(root);
  busyDisables(model, addBtn, tokBtn);

  const drawList = () => {
    list.replaceChildren();
    const sel = model.get("selected"), selTok = model.get("selected_tokenization");
    for (const d of model.get("datasets")) {
      const toks = h("div", {}, d.tokenizations.map((t) => h("button", {
        class: "secondary", title: t.name,
        text: `${t.model} · ctx ${t.context_size}${t.min_length > 1 ? ` · min ${t.min_length}` : ""} · ${fmtInt(t.tokens)} tok`,
        style: { margin: "1px", fontWeight: t.id === selTok ? "700" : "400" },
        on: { click: (e) => { e.stopPropagation(); send(model, "select", { tokenization: t.id }); } } })));
      const del = h("button", { class: "secondary", text: "Delete", title: "delete the dataset and its tokenizations",
        on: { click: (e) => { e.stopPropagation(); if (confirm(`Delete ${d.name} and its tokenizations?`)) send(model, "delete", { id: d.id }); } } });
      list.append(h("tr", { class: `selectable ${d.id === sel ? "selected" : ""}`, "data-name": d.name,
        on: { click: () => send(model, "select", { dataset: d.id }) } },
        h("td", { text: d.name }), h("td", { text: fmtInt(d.documents) }), h("td", { text: d.source, class: "muted" }),
        h("td", { text: d.licence || "" }), h("td", {}, toks), h("td", {}, del)));
    }
    if (!model.get("datasets").length) list.append(h("tr", {}, h("td", { colspan: 6, class: "muted", text: "No datasets yet: add 'default' for the embedded modern-English corpus (or 'shakespeare')." })));
    const cur = model.get("datasets").find((d) => d.id === sel);
    target.textContent = cur ? `“${cur.name}”` : "(add a dataset first)";
    tokBtn.disabled = !cur || !model.get("models").length || model.get("status") === "busy";
  };

  const drawModels = () => {
    const prev = modelSel.value;
    modelSel.replaceChildren(...model.get("models").map((m) => h("option", { value: m.id, text: m.name })));
    if (!model.get("models").length) modelSel.append(h("option", { value: "", text: "(add a model in Models)" }));
    if ([...modelSel.options].some((o) => o.value === prev)) modelSel.value = prev;
    drawList();
  };

  const drawStats = () => {
    const s = model.get("stats") || {};
    stats.replaceChildren();
    if (!s.tokens) { stats.style.display = "none"; return; }
    stats.style.display = "";
    stats.append(h("h4", { text: "Statistics" }),
      h("div", { class: "kv" }, kv("Tokens", fmtInt(s.tokens)), kv("Sequences", fmtInt(s.sequences)),
        kv("Context size", fmtInt(s.context_size)), kv("Documents kept", `${fmtInt(s.documents_kept)} / ${fmtInt(s.documents)}`),
        kv("Mean doc tokens", fmtNum(s.mean_doc_tokens, 0)), kv("Unique tokens", fmtInt(s.unique_tokens)),
        kv("Special positions", fmtInt(s.special_positions))),
      h("div", { class: "row", style: { alignItems: "flex-start", marginTop: "8px" } },
        h("div", {}, h("div", { class: "muted", text: "Document length (tokens)" }),
          histogram(s.length_histogram.counts, s.length_histogram.edges, { xlabel: "tokens per document" })),
        h("div", {}, h("div", { class: "muted", text: "Most frequent tokens" }),
          h("table", { "data-testid": "ds-top-tokens", style: { width: "auto" } },
            s.top_tokens.slice(0, 12).map((t) => h("tr", {}, h("td", { class: "tok", text: JSON.stringify(t.token) }),
              h("td", { text: fmtInt(t.count) })))))));
  };

  const drawPreview = () => {
    const p = model.get("preview") || [];
    preview.replaceChildren();
    if (!p.length) { preview.style.display = "none"; return; }
    preview.style.display = "";
    preview.append(h("h4", { text: p[0].tokens ? "Preview (packed sequences, token boundaries shaded)" : "Preview (documents)" }));
    for (const item of p) {
      const box = h("div", { class: "tok", style: { borderBottom: "1px dashed var(--ms-border)", marginBottom: "6px" } });
      if (item.tokens) for (const t of item.tokens) box.append(h("span", { class: /^<\|.*\|>$/.test(t) ? "special" : "", text: t.replace(/Ġ/g, " ").replace(/Ċ/g, "↵\n") }));
      else box.textContent = item.text;
      preview.append(box);
    }
  };

  model.on("change:datasets", drawList);
  model.on("change:selected", drawList);
  model.on("change:selected_tokenization", drawList);
  model.on("change:models", drawModels);
  model.on("change:stats", drawStats);
  model.on("change:preview", drawPreview);
  drawModels(); drawStats(); drawPreview();
}

export default { render };
