// TrainingMonitor's table: status, progress with ETA and tokens/s, pause/resume/stop, overlay other runs.

function render({ model, el }) {
  const root = h("div", { class: "mistudio mistudio-training-controls", "data-testid": "training-monitor" });
  const body = h("tbody");
  const other = h("select", { "data-testid": "run-other" });
  const device = h("div", { class: "muted", "data-testid": "run-device" });
  const attach = h("button", { class: "secondary", text: "Overlay", on: { click: () => other.value && send(model, "attach", { id: other.value }) } });
  root.append(h("table", { "data-redrawn": true }, h("thead", {}, h("tr", {}, ["Run", "Status", "Progress", "Tokens/s", "ETA", ""].map((t) => h("th", { text: t })))), body),
    h("div", { class: "row" }, h("span", { class: "muted", text: "Watch another run:" }), other, attach), device, statusBar(model));
  el.append(root);
  reportTheme(model, root);
  const fmtEta = (s, est) => (s === null || s === undefined ? "–"
    : `${est ? "≈ " : ""}${s < 90 ? `${Math.round(s)} s` : `${(s / 60).toFixed(1)} min`}${est ? " (estimate)" : ""}`);
  // what the run is doing now: harvesting activations (model forward passes) or training steps
  const stageText = (r) => {
    if (r.stage === "harvest") return `harvesting activations ${fmtInt(r.stage_done)}${r.stage_total ? ` / ${fmtInt(r.stage_total)}` : ""} tokens`;
    if (r.stage === "starting") return "loading the model and data";
    if (r.stage === "saving") return "saving the SAE";
    if (r.stage === "preparing evaluation") return "measuring the model's own loss on the held-out text";
    return "";
  };
  const draw = () => {
    body.replaceChildren();
    const runs = model.get("runs") || [];
    for (const r of runs.filter((x) => x.attached !== false)) {
      const frac = r.steps ? Math.min(r.step / r.steps, 1) : 0;
      const btns = h("span", { class: "row" });
      if (r.live && r.status === "running") btns.append(h("button", { class: "secondary", text: "Pause", "data-testid": "run-pause", on: { click: () => send(model, "pause", { id: r.id }) } }));
      if ((r.live && r.status === "paused") || (!r.live && r.status === "interrupted" && r.last_checkpoint))
        btns.append(h("button", { class: "secondary", text: "Resume", "data-testid": "run-resume", on: { click: () => send(model, "resume", { id: r.id }) } }));
      if (r.live) btns.append(h("button", { text: "Stop", "data-testid": "run-stop", on: { click: () => send(model, "stop", { id: r.id }) } }));
      btns.append(h("button", { class: "secondary", text: "Hide", on: { click: () => send(model, "detach", { id: r.id }) } }));
      body.append(h("tr", { "data-run": r.name },
        h("td", { text: r.name }), h("td", { "data-testid": "run-status", text: r.status + (r.error ? ` (${r.error.slice(0, 80)})` : ""), title: r.error || "" }),
        h("td", {}, h("div", { class: "row" }, h("div", { class: "bar" }, h("div", { style: { width: `${(frac * 100).toFixed(1)}%` } })),
          h("span", { "data-testid": "run-step", text: `${fmtInt(r.step)} / ${fmtInt(r.steps)}` })),
          h("div", { class: "muted", "data-testid": "run-stage", text: stageText(r) })),
        h("td", { text: r.tokens_per_second ? fmtInt(Math.round(r.tokens_per_second)) : "–" }),
        h("td", { "data-testid": "run-eta", text: fmtEta(r.eta_seconds, r.eta_estimated) }), h("td", {}, btns)));
    }
    if (!body.children.length) body.append(h("tr", {}, h("td", { colspan: 6, class: "muted", text: "No run attached: start one above, or overlay an earlier run." })));
    const rest = runs.filter((x) => x.attached === false);
    other.replaceChildren(h("option", { value: "", text: rest.length ? "(choose a run)" : "(no other runs)" }),
      ...rest.map((x) => h("option", { value: x.id, text: `${x.name} (${x.status})` })));
  };
  const drawDevice = () => { device.textContent = model.get("device") || ""; };
  model.on("change:runs", draw);
  model.on("change:device", drawDevice);
  draw();
  drawDevice();
}

export default { render };
