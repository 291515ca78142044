"""Steering cost on the default model, in one run: per-token generation latency and time to first token,
steered (an additive feature direction at the SAE's hook on every position) against unsteered, same
prompt, seed and settings. Targets: per-token overhead <= 5%, time to first token <= 100 ms added.

    python benchmarks/bench_steer.py [--sae NAME] [--tokens 64] [--repeats 3]
(without --sae, the newest SAE of the workspace.)
"""

from __future__ import annotations

import argparse
import statistics
import time

from mistudio_widgets import Workspace
from mistudio_widgets.core.configs import SteerConfig
from mistudio_widgets.features import load_library_sae, model_for_sae, sae_hook
from mistudio_widgets.steering import generate, make_edit, prompt_ids


def timed(lm, ids, cfg, hook=None, edit=None) -> tuple[float, float]:
    stamps: list[float] = []
    t0 = time.perf_counter()
    generate(lm, ids, cfg, hook=hook, edit=edit, on_token=lambda t: stamps.append(time.perf_counter()))
    first = stamps[0] - t0
    per_token = (stamps[-1] - stamps[0]) / max(len(stamps) - 1, 1)
    return first, per_token


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sae", default=None)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workspace", default=None)
    a = ap.parse_args()
    ws = Workspace(a.workspace)
    ref = a.sae or ws.list("sae")[-1].id
    art, sae, _ = load_library_sae(ws, ref)
    lm = model_for_sae(ws, art, sae)
    hook = sae_hook(art, sae)
    cfg = SteerConfig(
        features=[[0, 10.0]],
        prompt="Tell me a story about a king and his daughter.",
        max_tokens=a.tokens,
        temperature=0.0,
    )
    ids = prompt_ids(lm, cfg.prompt, True)
    edit = make_edit(sae, [(0, 10.0)], cfg)
    timed(lm, ids, cfg)  # warm-up
    base, steered = [], []
    for r in range(a.repeats):  # alternate the order, so drift hits both alike
        if r % 2:
            steered.append(timed(lm, ids, cfg, hook, edit))
            base.append(timed(lm, ids, cfg))
        else:
            base.append(timed(lm, ids, cfg))
            steered.append(timed(lm, ids, cfg, hook, edit))
    b_first, b_tok = statistics.median(x[0] for x in base), statistics.median(x[1] for x in base)
    s_first, s_tok = statistics.median(x[0] for x in steered), statistics.median(x[1] for x in steered)
    print(
        f"SAE {art.name} at {hook}; prompt {ids.shape[1]} tokens, {a.tokens} generated, median of {a.repeats}"
    )
    print(f"unsteered: {1000 * b_tok:6.1f} ms/token, first token {1000 * b_first:6.1f} ms")
    print(f"steered:   {1000 * s_tok:6.1f} ms/token, first token {1000 * s_first:6.1f} ms")
    print(
        f"per-token overhead {100 * (s_tok / b_tok - 1):+.1f}% (target <= 5%); time to first token "
        f"{1000 * (s_first - b_first):+.1f} ms (target <= 100 ms); ratio steered/unsteered "
        f"{s_tok / b_tok:.3f}"
    )


if __name__ == "__main__":
    main()
