"""Insight on the demo's SAE, measured: (a) how much steering with the shouting feature the demo finds
raises the share of uppercase letters in chat answers to three prompts the demo was not tuned on,
(b) whether the detection scorer can tell a feature's own label from another feature's label on the
same held-out texts, (c) the demo's wall time split by step. Everything is printed as ratios (steered /
unsteered, own-label wins / chance, step / total); nothing here is a timed assertion.

    python benchmarks/bench_insight.py [--sae NAME] [--features 50] [--demo]
(without --sae, the newest SAE whose name starts with demo-topk; --demo first runs `mistudio demo` in a
fresh temporary workspace and reports its steps.)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from mistudio_widgets import Workspace
from mistudio_widgets.cli.demo import SHOUTS, uppercase_share
from mistudio_widgets.core.configs import LabelConfig, SteerConfig
from mistudio_widgets.features import (
    contrast,
    feature_columns,
    feature_detail,
    ordinary_case,
    require_extraction,
)
from mistudio_widgets.features.labeling import LocalChat, explain, held_out_texts, judge, simulation_score
from mistudio_widgets.steering import auto_strength, steer

UNTUNED_PROMPTS = [
    "What did you have for breakfast?",
    "Describe the town where you grew up.",
    "Give me some advice for a job interview.",
]


def steering_part(ws: Workspace, sae: str, feature: int) -> None:
    print(f"(a) steering with feature {feature}, strength chosen automatically per prompt")
    ratios = []
    for prompt in UNTUNED_PROMPTS:
        auto = auto_strength(ws, sae, SteerConfig(features=[[feature, 0.0]], prompt=prompt, max_tokens=40))
        s = auto["strength"] or 0.0
        r = steer(ws, sae, SteerConfig(features=[[feature, s]], prompt=prompt, max_tokens=40))
        u0, u1 = uppercase_share(r["unsteered"]), uppercase_share(r["steered"])
        ratios.append(u1 / max(u0, 1e-3))
        print(
            f"  {prompt!r}: strength {s:.2f} ({(auto['relative'] or 0):.0%} of the residual norm); uppercase "
            f"{u0:.0%} -> {u1:.0%} (x{u1 / max(u0, 1e-3):.1f})\n    unsteered: {r['unsteered'][:100]!r}\n"
            f"    steered:   {r['steered'][:100]!r}"
        )
    print(
        "  geometric mean ratio steered/unsteered uppercase share: "
        f"x{float(np.exp(np.mean(np.log(ratios)))):.1f}"
    )


def label_part(ws: Workspace, sae: str, n: int, seed: int = 0) -> None:
    ext = require_extraction(ws, sae)
    cols = feature_columns(ws, ext)
    cfg = LabelConfig(score_examples=5)
    rng = np.random.default_rng(seed)
    live = np.nonzero((cols["frequency"] > 0) & (cols["frequency"] < 0.1))[0]
    picked = [int(f) for f in rng.permutation(live)]
    chat = LocalChat(ws, cfg.model)
    labels, texts = {}, {}
    t0 = time.perf_counter()
    for f in picked:
        if len(labels) >= n:
            break
        d = feature_detail(ws, ext, f)
        if len(d["examples"]) < cfg.examples + 2:
            continue
        pos, neg = held_out_texts(ws, ext, d, cfg, rng)
        if len(pos) < 3 or len(neg) < len(pos):
            continue
        label = explain(chat, d, cfg)[0]
        if label:
            labels[f], texts[f] = label, (pos, neg)
    feats = list(labels)
    others = feats[1:] + feats[:1]  # every feature is paired with another feature's label
    print(
        f"(b) {len(feats)} live features labelled by the in-kernel explainer "
        f"({time.perf_counter() - t0:.0f}s); "
        "each feature's held-out texts scored with its own label and with another feature's:"
    )
    for name in ("simulation", "judge"):
        own, other = [], []
        for f, g in zip(feats, others):
            pos, neg = texts[f]
            a, b = (
                simulation_score(lab, pos, neg) if name == "simulation" else judge(chat, lab, pos, neg, cfg)
                for lab in (labels[f], labels[g])
            )
            own.append(a["score"]), other.append(b["score"])
        scored = [x for x in own if x is not None]
        o = np.array([0.5 if x is None else x for x in own])
        t = np.array([0.5 if x is None else x for x in other])
        w = (o > t) + 0.5 * (o == t)
        boot = [rng.choice(w, len(w)).mean() for _ in range(2000)]
        lo, hi = np.percentile(boot, [2.5, 97.5])
        rule = "simulation (AUC)" if name == "simulation" else "in-kernel judge, P(yes) above the median"
        print(
            f"  {rule}: {len(scored)}/{len(own)} labels scorable; mean score own {o.mean():.3f} vs "
            f"other {t.mean():.3f} "
            f"(chance 0.5; unscorable count as 0.5)\n    own label scores higher in {w.mean():.1%} of "
            "features "
            f"(ties half; 95% bootstrap interval {lo:.1%}..{hi:.1%}); chance 50%: ratio x{w.mean() / 0.5:.2f}"
        )
    for f in feats[:10]:
        print(f"    {f:>5}: {labels[f]!r}")


def demo_part() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "MISTUDIO_HOME": os.path.join(tmp, "ws"), "HF_HUB_OFFLINE": "1"}
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "mistudio_widgets.cli", "--json", "demo"],
            capture_output=True,
            text=True,
            env=env,
        )
        wall = time.perf_counter() - t0
    if proc.returncode:
        print("(c) the demo failed:\n" + proc.stderr[-2000:])
        return
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    steps = summary["step_seconds"]
    print(f"(c) the demo in a fresh workspace: {wall:.0f}s wall ({summary['seconds']:.0f}s inside)")
    for k, v in steps.items():
        print(f"  {k:<9} {v:6.1f}s  {v / summary['seconds']:.1%}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sae", default=None)
    ap.add_argument("--features", type=int, default=50)
    ap.add_argument(
        "--demo", action="store_true", help="also run the demo in a fresh workspace and split its time"
    )
    ap.add_argument("--workspace", default=None)
    a = ap.parse_args()
    ws = Workspace(a.workspace)
    if a.demo:
        demo_part()
    sae = a.sae or [s for s in ws.list("sae") if s.name.startswith("demo-topk")][-1].id
    found = contrast(ws, sae, SHOUTS, [ordinary_case(x) for x in SHOUTS])
    steering_part(ws, sae, found["steer_with"])
    label_part(ws, sae, a.features)


if __name__ == "__main__":
    main()
