// SystemMonitor: CPU per core, RAM, disk, GPU (NVML) — refreshed about once a second while visible.

function render({ model, el }) {
  const root = h("div", { class: "mistudio mistudio-system-monitor", "data-testid": "system-monitor" });
  const cores = h("div", { class: "cores", "data-testid": "sys-cores" });
  const cpuText = h("span", { "data-testid": "sys-cpu" });
  const ramBar = h("div"), ramText = h("span", { "data-testid": "sys-ram" });
  const diskBar = h("div"), diskText = h("span", { "data-testid": "sys-disk" });
  const gpu = h("div", { "data-testid": "sys-gpu" });
  const spark = h("svg", { width: 120, height: 28, viewBox: "0 0 120 28" });
  const line = h("polyline", { fill: "none", stroke: "var(--ms-accent)", "stroke-width": 1.5, points: "" });
  spark.append(line);
  const history = [];

  root.append(h("section", {}, h("div", { class: "meters" },
    h("span", { class: "muted", text: "CPU" }), h("div", { class: "row" }, cores, spark), cpuText,
    h("span", { class: "muted", text: "RAM" }), h("div", { class: "bar" }, ramBar), ramText,
    h("span", { class: "muted", text: "Disk" }), h("div", { class: "bar" }, diskBar), diskText),
    gpu));
  el.append(root);

  const draw = () => {
    const s = model.get("snapshot") || {};
    const cpu = s.cpu || [];
    cores.replaceChildren(...cpu.map((c, i) => h("div", { title: `core ${i}: ${fmtNum(c, 0)}%`, style: { height: `${Math.max(c, 2) * 0.28}px` } })));
    const avg = cpu.length ? cpu.reduce((a, b) => a + b, 0) / cpu.length : 0;
    cpuText.textContent = `${fmtNum(avg, 0)}% of ${cpu.length} cores`;
    history.push(avg); if (history.length > 60) history.shift();
    line.setAttribute("points", history.map((v, i) => `${i * 2},${27 - v * 0.26}`).join(" "));
    const ram = s.ram || {}, disk = s.disk || {};
    ramBar.style.width = `${ram.total ? (100 * ram.used) / ram.total : 0}%`;
    ramText.textContent = `${fmtBytes(ram.used)} / ${fmtBytes(ram.total)} (kernel ${fmtBytes(s.process_rss)})`;
    diskBar.style.width = `${disk.total ? (100 * disk.used) / disk.total : 0}%`;
    diskText.textContent = `${fmtBytes(disk.used)} / ${fmtBytes(disk.total)}`;
    diskText.title = disk.path || "";
    gpu.replaceChildren();
    if (s.gpu_state === "ok") {
      for (const g of s.gpus) {
        gpu.append(h("div", { class: "meters", style: { marginTop: "6px" } },
          h("span", { class: "muted", text: `GPU ${g.index}` }), h("div", { class: "bar" }, h("div", { style: { width: `${g.util}%` } })),
          h("span", { text: `${fmtNum(g.util, 0)}% · ${g.name}` }),
          h("span", { class: "muted", text: "GPU memory" }), h("div", { class: "bar" }, h("div", { style: { width: `${(100 * g.mem_used) / g.mem_total}%` } })),
          h("span", { text: `${fmtBytes(g.mem_used)} / ${fmtBytes(g.mem_total)}` }),
          h("span", { class: "muted", text: "Temp · power" }), h("span", {}),
          h("span", { text: `${g.temperature ?? "–"} °C · ${g.power_w ? fmtNum(g.power_w, 0) : "–"} W${g.power_limit_w ? ` / ${fmtNum(g.power_limit_w, 0)} W` : ""}` })));
      }
    } else {
      gpu.append(h("div", { class: "muted", style: { marginTop: "6px" }, "data-testid": "sys-nogpu",
        text: s.gpu_state === "error" ? `GPU monitoring failed: ${s.gpu_message}` : `No GPU: ${s.gpu_message || "none detected"}. Work runs on the CPU.` }));
    }
  };
  model.on("change:snapshot", draw);
  draw();

  // Sample only while the widget is on screen and the browser tab is visible.
  let onScreen = false;
  const setVisible = () => {
    const v = onScreen && document.visibilityState === "visible";
    if (model.get("visible") !== v) { model.set("visible", v); model.save_changes(); }
  };
  const io = new IntersectionObserver((entries) => { onScreen = entries.some((e) => e.isIntersecting); setVisible(); });
  io.observe(root);
  document.addEventListener("visibilitychange", setVisible);
  return () => { io.disconnect(); document.removeEventListener("visibilitychange", setVisible); model.set("visible", false); model.save_changes(); };
}

export default { render };
