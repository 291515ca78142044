"""FeatureBrowser front-end speed with 16,384 features, in headless Chromium (Debian's /usr/bin/chromium
through Playwright): first render, time per filter keystroke, sort, scroll. The page runs the real
widget module (js/feature_browser.js with the shared helpers and CSS) on a real extraction of a
16,384-feature SAE (trained and extracted here on first use); only the kernel connection is replaced by
an in-page model object holding the same traits the kernel would send.

Baseline in the same run: drawing every feature as a DOM row at once (no virtualisation).
Targets: first render < 1 s, filter keystroke < 50 ms.

    python benchmarks/bench_browser.py [--workspace DIR]
"""

from __future__ import annotations

import argparse
import base64
import json

from mistudio_widgets import Workspace
from mistudio_widgets.core.configs import ExtractConfig, TrainConfig
from mistudio_widgets.features import extract, feature_columns, latest_extraction
from mistudio_widgets.train.training import train
from mistudio_widgets.widgets.base import css, esm

D_SAE = 16384
PAGE = """<!doctype html><html><head><style>%(css)s</style></head>
<body><div id="root" style="width:1200px"></div>
<script type="module">
const cols = Uint8Array.from(atob("%(columns)s"), (c) => c.charCodeAt(0));
const traits = %(traits)s;
traits.columns = new DataView(cols.buffer);
const handlers = {};
const model = { get: (k) => traits[k], set: (k, v) => { traits[k] = v; }, save_changes() {},
  on: (ev, fn) => { (handlers[ev] = handlers[ev] || []).push(fn); }, off() {}, send: () => {} };
const mod = await import("data:text/javascript;base64,%(esm)s");
const el = document.getElementById("root");
const t0 = performance.now();
mod.default.render({ model, el });
el.offsetHeight;                                   // layout included
const first = performance.now() - t0;
await new Promise((r) => requestAnimationFrame(() => r()));
const painted = performance.now() - t0;
const filter = el.querySelector('[data-testid="fb-filter"]');
const keys = [];
for (const q of ["k", "ki", "kin", "king", "kin", "ki", "k", "", "1", "12", "123", "1234"]) {
  const s = performance.now();
  filter.value = q; filter.dispatchEvent(new Event("input"));
  el.offsetHeight;
  keys.push(performance.now() - s);
}
filter.value = ""; filter.dispatchEvent(new Event("input"));
const sortSel = el.querySelector('[data-testid="fb-sort"]');
let s = performance.now(); sortSel.value = "frequency"; sortSel.dispatchEvent(new Event("change"));
el.offsetHeight;
const sort = performance.now() - s;
const list = el.querySelector('[data-testid="fb-list"]');
s = performance.now(); list.scrollTop = list.scrollHeight / 2; list.dispatchEvent(new Event("scroll"));
await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(() => r()))); el.offsetHeight;
const scroll = performance.now() - s;
const rows = el.querySelectorAll('[data-testid="feature-row"]').length;
// baseline: every feature as a DOM row at once
const base = document.createElement("div"); base.className = "mistudio"; document.body.append(base);
s = performance.now();
const labels = traits.labels;
for (let i = 0; i < traits.n_features; i++) {
  const r = document.createElement("div"); r.className = "vrow"; r.style.position = "static";
  for (const t of [String(i), labels[i] || "—", "0.1%%"]) {
    const sp = document.createElement("span"); sp.textContent = t; r.append(sp);
  }
  base.append(r);
}
base.offsetHeight;
const naive = performance.now() - s;
s = performance.now();
for (const r of base.children)
  r.style.display = (labels[r.firstChild.textContent] || "").includes("king") ? "" : "none";
base.offsetHeight;
const naiveKey = performance.now() - s;
window.result = { first, painted, keys, sort, scroll, rows, naive, naiveKey };
</script></body></html>"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workspace", default=None)
    a = ap.parse_args()
    ws = Workspace(a.workspace)
    sae = next((s for s in ws.list("sae") if s.meta.get("d_sae") == D_SAE and latest_extraction(ws, s)), None)
    if sae is None:
        res = train(
            ws,
            TrainConfig(
                steps=8,
                batch_tokens=1024,
                d_sae=D_SAE,
                eval_every=0,
                chunk_sequences=128,
                eval_sequences=4,
                name=ws.unique_name("run", "bench-browser-16k"),
            ),
        )
        sae = ws.get(res.sae_id)
        extract(ws, sae, ExtractConfig(tokens=4096, top_k=10))
    ext = latest_extraction(ws, sae)
    cols = feature_columns(ws, ext)
    import numpy as np
    import pyarrow.parquet as pq

    packed = np.stack([cols[c].astype("<f4") for c in ("frequency", "mean", "max")]).tobytes()
    top = pq.read_table(ext.path / "features.parquet", columns=["top_logit_tokens"]).column(0).to_pylist()
    labels = {
        str(i): f"promotes {t[0].strip()!r}" for i, t in enumerate(top)
    }  # a text label for every feature
    traits = {
        "saes": [{"id": sae.id, "name": sae.name, "extraction": ext.id}],
        "sae": sae.id,
        "extraction": {"id": ext.id, **ext.meta["summary"]},
        "n_features": len(cols["frequency"]),
        "labels": labels,
        "detail": {},
        "prompt": {},
        "coact": {},
        "status": "idle",
        "task": "",
        "progress": {},
        "error": {},
        "message": "",
        "label_settings": {
            "backend": "local",
            "model": "default",
            "base_url": "",
            "template": "",
            "score": True,
        },
    }
    html = PAGE % {
        "css": css(),
        "columns": base64.b64encode(packed).decode(),
        "traits": json.dumps(traits),
        "esm": base64.b64encode(esm("feature_browser").encode()).decode(),
    }
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_content(html)
        page.wait_for_function("window.result !== undefined", timeout=60_000)
        r = page.evaluate("window.result")
        browser.close()
    keys = r["keys"]
    print(f"{traits['n_features']:,} features (SAE {sae.name}); {r['rows']} rows in the page after scrolling")
    print(f"first render:        {r['first']:7.1f} ms (painted {r['painted']:.1f} ms)   target < 1000 ms")
    print(
        f"filter keystroke:    mean {sum(keys) / len(keys):6.1f} ms, max {max(keys):6.1f} ms   target < 50 ms"
    )
    print(f"sort by frequency:   {r['sort']:7.1f} ms;  scroll to the middle: {r['scroll']:.1f} ms")
    print(f"baseline, every row in the DOM: render {r['naive']:.1f} ms, one filter {r['naiveKey']:.1f} ms")
    print(
        f"ratios vs baseline: render {r['naive'] / max(r['first'], 1e-3):.1f}x faster, "
        f"keystroke {r['naiveKey'] / max(max(keys), 1e-3):.1f}x faster"
    )


if __name__ == "__main__":
    main()
