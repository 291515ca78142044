"""Insight on the demo's SAE, measured: (a) how much steering with the shouting feature the demo finds
raises the share of uppercase letters in chat answers to three prompts the demo was not tuned on,
(b) the demo's wall time split by step (labels are measured in ``bench_labels.py``). Everything is
printed as ratios (steered / unsteered, step / total); nothing here is a timed assertion.

    python benchmarks/bench_insight.py [--sae NAME] [--demo]
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
from mistudio_widgets.core.configs import SteerConfig
from mistudio_widgets.features import (
    contrast,
    ordinary_case,
)
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
        s = auto.strength or 0.0
        r = steer(ws, sae, SteerConfig(features=[[feature, s]], prompt=prompt, max_tokens=40))
        u0, u1 = uppercase_share(r.unsteered), uppercase_share(r.steered)
        ratios.append(u1 / max(u0, 1e-3))
        print(
            f"  {prompt!r}: strength {s:.2f} ({(auto.relative or 0):.0%} of the residual norm); uppercase "
            f"{u0:.0%} -> {u1:.0%} (x{u1 / max(u0, 1e-3):.1f})\n    unsteered: {r.unsteered[:100]!r}\n"
            f"    steered:   {r.steered[:100]!r}"
        )
    print(
        "  geometric mean ratio steered/unsteered uppercase share: "
        f"x{float(np.exp(np.mean(np.log(ratios)))):.1f}"
    )


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
        print("(b) the demo failed:\n" + proc.stderr[-2000:])
        return
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    steps = summary["step_seconds"]
    print(f"(b) the demo in a fresh workspace: {wall:.0f}s wall ({summary['seconds']:.0f}s inside)")
    for k, v in steps.items():
        print(f"  {k:<9} {v:6.1f}s  {v / summary['seconds']:.1%}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sae", default=None)
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


if __name__ == "__main__":
    main()
