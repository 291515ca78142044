"""Attribution on the demo's SAE, measured: seconds for one prompt's attribution (one forward and one
backward pass) against the exact ablation of the same top features one forward pass each (the baseline,
timed in the same run), and how well activation x gradient predicts the exact effect on the top 50
features of several prompts (Pearson r). Printed as ratios and correlations; nothing is asserted.

    python benchmarks/bench_analysis.py [--sae NAME] [--top 50]
(without --sae, the newest SAE whose name starts with demo-topk.)

Then the whole-dictionary ablation impact over 32k held-out tokens (one forward and backward pass per
batch): its seconds, and the r between its estimate and exact ablation for the top 50 features.
"""

from __future__ import annotations

import argparse
import statistics
import time

from mistudio_widgets import Workspace
from mistudio_widgets.features import ablation_impact, attribute

PROMPTS = [
    ("The capital of France is", " Paris"),
    ("WHY ARE YOU SHOUTING AT", " ME"),
    ("Once upon a", " time"),
    ("The opposite of hot is", " cold"),
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sae", default=None)
    p.add_argument("--top", type=int, default=50)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--impact-tokens", type=int, default=32768)
    a = p.parse_args()
    ws = Workspace()
    sae = a.sae or next(s.id for s in reversed(ws.list("sae")) if s.name.startswith("demo-topk"))
    attribute(ws, sae, *PROMPTS[0], top=1, ablate=0)  # load the model (float32) once, outside the timings
    print(f"SAE {ws.get(sae).name}: attribution of the next token's logit, top {a.top} features")
    print(f"  {'prompt':32}{'target':>9}{'attrib. s':>11}{'+ exact s':>11}{'exact/attrib.':>15}{'r':>7}")
    rs = []
    for prompt, target in PROMPTS:
        fast, slow, r = [], [], None
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            attribute(ws, sae, prompt, target, top=a.top, ablate=0)
            t1 = time.perf_counter()
            res = attribute(ws, sae, prompt, target, top=a.top, ablate=a.top)
            t2 = time.perf_counter()
            fast.append(t1 - t0)
            slow.append((t2 - t1) - (t1 - t0))  # the exact ablations alone
            r = res.correlation
        f, s = statistics.median(fast), statistics.median(slow)
        rs.append(r)
        print(
            f"  {prompt[:30]!r:32}{target!r:>9}{f:>11.2f}{s:>11.2f}{s / f:>14.1f}x"
            + (f"{r:>7.3f}" if r is not None else f"{'–':>7}")
        )
    good = [r for r in rs if r is not None]
    print(
        f"median r (activation x gradient against exact ablation, top {a.top}): {statistics.median(good):.3f}"
    )
    t0 = time.perf_counter()
    ablation_impact(ws, sae, tokens=a.impact_tokens, exact=0)
    t1 = time.perf_counter()
    imp = ablation_impact(ws, sae, tokens=a.impact_tokens, exact=a.top, exact_tokens=4096)
    t2 = time.perf_counter()
    r = f"{imp.correlation:.3f}" if imp.correlation is not None else "–"
    print(
        f"ablation impact of all {len(imp.estimate):,} features over {imp.tokens:,} held-out tokens: "
        f"{t1 - t0:.1f} s; the exact check of the top {a.top} over 4,096 tokens: "
        f"{(t2 - t1) - (t1 - t0):.1f} s more; r = {r}"
    )


if __name__ == "__main__":
    main()
