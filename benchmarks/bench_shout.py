"""Does the shouting feature make the chat model shout readably? For SAEs trained with the demo's recipe
at several layers, the contrast's feature is steered at the automatic strength (the one fluency rule,
refined by bisection) on eight chat prompts, four of them held out from choosing the settings, under
several steering settings (where the edit applies, sampling). Each steered answer is then judged by
measures the fluency rule does not use:

- uppercase: the share of its letters that are capitals;
- repeated: the share of its word trigrams that repeat an earlier one;
- real words: the share of its words found in an English word list (the `english-words` package: web2
  and GCIDE, lower-cased), which the rule never reads;
- sense: its lower-cased text's perplexity after the prompt under the unsteered model, as a multiple of
  the unsteered answer's.

An answer meets the target when uppercase >= 60%, repeated <= 10%, real words >= 90% and sense <= 10x.
Nothing here is a timed assertion.

    python benchmarks/bench_shout.py [--layers 6,10] [--workspace DIR] [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mistudio_widgets import Workspace  # noqa: E402
from mistudio_widgets.core.configs import SteerConfig  # noqa: E402
from mistudio_widgets.core.recipes import (  # noqa: E402
    HELD_OUT_PROMPTS,
    SHOUTS,
    TUNING_PROMPTS,
    demo_train_config,
    uppercase_share,
)
from mistudio_widgets.features import contrast, load_library_sae, model_for_sae, ordinary_case  # noqa: E402
from mistudio_widgets.steering import auto_strength, fluency, prompt_ids, steer  # noqa: E402

SETTINGS = {  # name -> SteerConfig fields
    "add, all positions, greedy": dict(positions="all"),
    "add, answer only, greedy, freq. penalty 0.3": dict(positions="generated", frequency_penalty=0.3),
    "add, answer only, greedy, freq. penalty 0.7": dict(positions="generated", frequency_penalty=0.7),
    "clamp, answer only, greedy, freq. penalty 0.7": dict(
        method="clamp", positions="generated", frequency_penalty=0.7
    ),
    "clamp, answer only, Neuronpedia sampling (t 0.2, freq. penalty 1, seed 16; the demo's)": dict(
        method="clamp", positions="generated", temperature=0.2, frequency_penalty=1.0, seed=16
    ),
}
TARGET = dict(uppercase=0.6, repeated=0.1, real_words=0.9, sense=10.0)


def word_list() -> set[str]:
    from english_words import get_english_words_set

    return get_english_words_set(["web2", "gcide"], lower=True)


def real_words(text: str, words: set[str]) -> float:
    found = [w.lower().split("'")[0] for w in re.findall(r"[A-Za-z]+(?:'[A-Za-z]+)?", text)]
    found = [w for w in found if len(w) > 1 or w in ("a", "i")]
    return sum(w in words for w in found) / len(found) if found else 0.0


def repeated(text: str) -> float:
    w = text.lower().split()
    grams = [tuple(w[i : i + 3]) for i in range(len(w) - 2)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


@dataclasses.dataclass
class Judged:
    prompt: str
    held_out: bool
    strength: float | None
    relative: float | None
    text: str
    uppercase: float
    repeated: float
    real_words: float
    sense: float

    @property
    def meets(self) -> bool:
        return (
            self.uppercase >= TARGET["uppercase"]
            and self.repeated <= TARGET["repeated"]
            and self.real_words >= TARGET["real_words"]
            and self.sense <= TARGET["sense"]
        )


def judge(ws, sae, lm, feature, prompt, fields, words, held_out, bound) -> Judged:
    cfg = SteerConfig(features=[[feature, 0.0]], prompt=prompt, max_tokens=40, **fields)
    auto = auto_strength(ws, sae, cfg, **({"max_perplexity": bound} if bound else {}))
    r = steer(
        ws, sae, dataclasses.replace(cfg, features=[[feature, auto.strength or 0.0]], downstream="none")
    )
    ids = prompt_ids(lm, prompt, True)
    sense = fluency(lm, ids, r.steered).perplexity / max(fluency(lm, ids, r.unsteered).perplexity, 1e-9)
    return Judged(
        prompt,
        held_out,
        auto.strength,
        auto.relative,
        r.steered,
        uppercase_share(r.steered),
        repeated(r.steered),
        real_words(r.steered, words),
        sense,
    )


def train_sae(ws: Workspace, layer: int) -> str:
    from mistudio_widgets.train.training import train

    cfg = demo_train_config(ws, "default", hook=f"blocks.{layer}.hook_resid_post")
    t0 = time.perf_counter()
    res = train(ws, cfg)
    m = res.metrics
    print(
        f"layer {layer}: SAE {res.sae_id} in {time.perf_counter() - t0:.0f}s, "
        f"EV {m['explained_variance']:.3f}, CE recovered {m['ce_recovered']:.3f}"
    )
    assert res.sae_id is not None
    return res.sae_id


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", default="6")
    ap.add_argument("--workspace", default=None, help="reuse a workspace (SAEs are trained anew)")
    ap.add_argument("--settings", default=None, help="comma-separated indices into SETTINGS (default all)")
    ap.add_argument("--quick", action="store_true", help="one tuning and one held-out prompt")
    ap.add_argument(
        "--max-perplexity", type=float, default=None, help="the fluency rule's bound (default: the rule's)"
    )
    a = ap.parse_args()
    words = word_list()
    prompts = [(p, False) for p in TUNING_PROMPTS] + [(p, True) for p in HELD_OUT_PROMPTS]
    if a.quick:
        prompts = [prompts[0], prompts[4]]
    names = list(SETTINGS)
    if a.settings:
        names = [names[int(i)] for i in a.settings.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace(a.workspace or tmp)
        table = []
        for layer in [int(x) for x in a.layers.split(",")]:
            sae = train_sae(ws, layer)
            found = contrast(ws, sae, SHOUTS, [ordinary_case(x) for x in SHOUTS])
            feature = int(found["steer_with"])
            top = next(f for f in found["features"] if f["index"] == feature)
            print(
                f"  feature {feature}: fires on {top['rate']:.0%} of shouted tokens, "
                f"{top['rate_contrast']:.0%} of ordinary ones"
            )
            art, model_sae, _ = load_library_sae(ws, sae)
            lm = model_for_sae(ws, art, model_sae)
            for name in names:
                rows = [
                    judge(ws, sae, lm, feature, p, SETTINGS[name], words, h, a.max_perplexity)
                    for p, h in prompts
                ]
                for r in rows:
                    print(
                        f"  L{layer} | {name} | {'held out' if r.held_out else 'tuning'} | {r.prompt!r}: "
                        f"{(r.relative or 0):.1%} of the norm, upper {r.uppercase:.0%}, "
                        f"repeated {r.repeated:.0%}, real {r.real_words:.0%}, sense {r.sense:.1f}x"
                        f"{'  MEETS' if r.meets else ''}\n"
                        f"      {r.text[:160]!r}"
                    )
                    sys.stdout.flush()
                table.append((layer, name, rows))
        print(
            "\n| layer | setting | uppercase (median) | repeated | real words | sense | meets: tuning "
            "| meets: held out |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for layer, name, rows in table:
            med = lambda k: sorted(getattr(r, k) for r in rows)[len(rows) // 2]  # noqa: E731
            tune = f"{sum(r.meets for r in rows if not r.held_out)} of {sum(not r.held_out for r in rows)}"
            held = f"{sum(r.meets for r in rows if r.held_out)} of {sum(r.held_out for r in rows)}"
            print(
                f"| {layer} | {name} | {med('uppercase'):.0%} | {med('repeated'):.0%} "
                f"| {med('real_words'):.0%} | {med('sense'):.1f}x "
                f"| {tune} | {held} |"
            )


if __name__ == "__main__":
    main()
