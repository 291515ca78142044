"""Labels on the demo's SAE, measured: the statistical explainer over the whole dictionary and the in-kernel
language-model explainer on the same 100 random live features, every label scored by the reader on the
same held-out texts (AUC, chance 0.5). Printed: the score distributions, how often a feature's own label
beats another feature's label on the feature's own texts (with a 95% bootstrap interval; chance 50%), how
often the model's label beats the statistical one, features per second for each, and a table of 20
random features (label, score, the tokens they fire on most) to judge by eye. Nothing here is a timed
assertion.

    python benchmarks/bench_labels.py [--workspace W] [--sae NAME] [--features 100] [--table 20] [--no-model]
(without --sae, the newest SAE whose name starts with demo-topk: `make demo` makes it.)
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from mistudio_widgets import Workspace
from mistudio_widgets.core.configs import LabelConfig
from mistudio_widgets.features import feature_detail, require_extraction
from mistudio_widgets.features.label_evidence import load_evidence
from mistudio_widgets.features.label_reader import MIN_TEXTS, held_out_texts, score_label
from mistudio_widgets.features.label_stats import fired_keys
from mistudio_widgets.features.labeling import LocalChat, explain, label_features


def distribution(name: str, scores: list, verdicts: list[str], seconds: float, n: int) -> None:
    s = [x for x in scores if x is not None]
    above = sum(v == "above chance" for v in verdicts)
    print(
        f"  {name:<22} {n:>5} labels, {n / seconds:8.1f} features/s; held-out AUC median "
        f"{statistics.median(s):.3f}, {np.mean([x >= 0.7 for x in s]):.0%} >= 0.70, "
        f"{above / max(n, 1):.0%} above chance by 2 SE, {n - len(s)} unscored (chance 0.50)"
    )


def own_vs_other(name: str, labels: dict[int, str], texts: dict, rng) -> None:
    feats = list(labels)
    others = feats[1:] + feats[:1]  # every feature paired with another feature's label
    wins = []
    for f, g in zip(feats, others):
        a, b = (score_label(labels[x], texts[f]).score for x in (f, g))
        a, b = 0.5 if a is None else a, 0.5 if b is None else b
        wins.append(1.0 if a > b else 0.5 if a == b else 0.0)
    w = np.array(wins)
    boot = [rng.choice(w, len(w)).mean() for _ in range(2000)]
    lo, hi = np.percentile(boot, [2.5, 97.5])
    print(
        f"  {name:<22} own label beats another feature's in {w.mean():.1%} of {len(w)} features "
        f"(ties half; 95% interval {lo:.1%}..{hi:.1%}; chance 50%: x{w.mean() / 0.5:.2f})"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workspace", default=None)
    ap.add_argument("--sae", default=None)
    ap.add_argument("--features", type=int, default=100)
    ap.add_argument("--table", type=int, default=20)
    ap.add_argument("--no-model", action="store_true", help="statistical explainer only")
    a = ap.parse_args()
    ws = Workspace(a.workspace)
    sae = a.sae or [s for s in ws.list("sae") if s.name.startswith("demo-topk")][-1].id
    ext = require_extraction(ws, sae)
    cfg = LabelConfig()
    rng = np.random.default_rng(0)

    t0 = time.perf_counter()
    ev = load_evidence(ws, sae, cfg)
    t_ev = time.perf_counter() - t0
    run = label_features(ws, sae, cfg, all_features=True, redo=True)
    stat = {r.feature: r for r in run.of("statistical")}
    print(
        f"SAE {ws.get(sae).name}: {len(stat):,} live features; held-out texts {ev.key} "
        f"({len(ev.held_out.at):,} tokens after the {len(ev.explain.at):,} explained)"
    )
    print(
        f"evidence (model passes, made once and cached): {t_ev:.1f}s; "
        f"statistical labelling {run.seconds:.1f}s"
    )
    print("(a) the whole dictionary:")
    distribution(
        "statistical",
        [r.score.score for r in stat.values()],
        [r.verdict for r in stat.values()],
        run.seconds,
        len(stat),
    )

    def texts_of(f: int):
        return held_out_texts(ev.held_out, f, fired_keys(ev.explain, f), cfg.score_examples, cfg.seed)

    candidates = [f for f in rng.permutation(sorted(stat)) if stat[f].score.positives >= MIN_TEXTS]
    picked = [int(f) for f in candidates[: a.features]]
    texts = {f: texts_of(f) for f in picked}
    print(
        f"(b) the same {len(picked)} random live features (with >= {MIN_TEXTS} held-out firings), "
        "both explainers:"
    )
    labels = {"statistical": {f: stat[f].label for f in picked}}
    distribution(
        "statistical",
        [stat[f].score.score for f in picked],
        [stat[f].verdict for f in picked],
        run.seconds * len(picked) / len(stat),
        len(picked),
    )
    if not a.no_model:
        chat = LocalChat(ws, cfg.model)
        t0 = time.perf_counter()
        lm = {}
        for f in picked:
            label, _ = explain(chat, feature_detail(ws, ext, f), cfg)
            if label:
                lm[f] = label
        secs = time.perf_counter() - t0
        scores = {f: score_label(lab, texts[f]) for f, lab in lm.items()}
        distribution(
            f"in-kernel ({chat.name[:10]})",
            [s.score for s in scores.values()],
            [s.verdict for s in scores.values()],
            secs,
            len(lm),
        )
        labels["in-kernel model"] = lm
        both = [f for f in lm if scores[f].score is not None and stat[f].score.score is not None]
        beats = sum(scores[f].score > stat[f].score.score for f in both)
        print(
            f"  the model's label scores higher than the statistical one in {beats} of {len(both)} features"
        )
    print("(c) own label against another feature's label, on the feature's own held-out texts:")
    for name, labs in labels.items():
        own_vs_other(name, labs, texts, rng)
    print(
        f"(d) {a.table} random live features: the statistical label, its held-out score, "
        "the tokens it fires on"
    )
    for f in [int(x) for x in rng.choice(sorted(stat), a.table, replace=False)]:
        r, sc = stat[f], stat[f].score
        score = f"{sc.score:.2f} ± {sc.se:.2f}" if sc.score is not None else "  unscored "
        tops = ", ".join(repr(k) for k in fired_keys(ev.explain, f, 5))
        print(f"  {f:>5}  {score}  {r.verdict:<12}  {r.label[:70]:<70}  fires on: {tops}")


if __name__ == "__main__":
    main()
