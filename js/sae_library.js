// SAELibrary: trained and imported SAEs with their final metrics; rename, delete, open in a tab.

function render({ model, el }) {
  const root = h("div", { class: "mistudio mistudio-sae-library", "data-testid": "sae-library" });
  const body = h("tbody");
  root.append(h("section", {}, h("h4", { text: "SAE library" }),
    h("table", {}, h("thead", {}, h("tr", {}, ["Name", "Architecture", "Hook", "Latents", "EV", "L0", "Dead", "CE recovered", "Tokens", ""]
      .map((t) => h("th", { text: t })))), body)), statusBar(model));
  el.append(root);
  const pct = (v) => (v === null || v === undefined ? "–" : `${(100 * v).toFixed(1)}%`);
  const draw = () => {
    body.replaceChildren();
    for (const s of model.get("saes")) {
      const rename = h("button", { class: "secondary", text: "Rename", on: { click: () => {
        const name = prompt("New name", s.name); if (name && name.trim()) send(model, "rename", { id: s.id, name: name.trim() }); } } });
      const del = h("button", { class: "secondary", text: "Delete", on: { click: () => { if (confirm(`Delete ${s.name}?`)) send(model, "delete", { id: s.id }); } } });
      const feats = h("button", { class: "secondary", text: "Features", on: { click: () => send(model, "open", { id: s.id, target: "Features" }) } });
      const steer = h("button", { class: "secondary", text: "Steering", on: { click: () => send(model, "open", { id: s.id, target: "Steering" }) } });
      body.append(h("tr", { "data-name": s.name, title: s.path },
        h("td", { text: s.name }), h("td", { text: `${s.architecture}${s.k ? ` k=${s.k}` : ""}` }), h("td", { text: s.hook }),
        h("td", { text: fmtInt(s.d_sae) }), h("td", { text: fmtNum(s.explained_variance, 3) }), h("td", { text: fmtNum(s.l0, 1) }),
        h("td", { text: pct(s.dead_fraction) }), h("td", { text: fmtNum(s.ce_recovered, 3) }), h("td", { text: fmtInt(s.tokens) }),
        h("td", {}, h("span", { class: "row" }, feats, steer, rename, del))));
    }
    if (!model.get("saes").length) body.append(h("tr", {}, h("td", { colspan: 10, class: "muted", text: "No SAEs yet: train one in the Training tab." })));
  };
  model.on("change:saes", draw);
  draw();
}

export default { render };
