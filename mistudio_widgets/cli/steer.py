"""``mistudio steer``: steered and unsteered continuations side by side, with metrics; sweeps and presets."""

from __future__ import annotations

import argparse
import dataclasses
from typing import TYPE_CHECKING

from ..core.configs import SteerConfig
from ..core.workspace import Workspace
from .config_flags import add_config_flags, given

if TYPE_CHECKING:
    from ..steering.results import SteerResult


def cmd_steer(ws: Workspace, a: argparse.Namespace, out) -> None:
    from ..steering import (
        SteeringError,
        load_preset,
        parse_features,
        save_preset,
        steer,
        sweep,
    )

    if a.preset:
        sae, cfg = load_preset(ws, a.preset)
        if a.sae and ws.get(a.sae, "sae").id != sae:
            raise SteeringError(
                f"The preset {a.preset!r} belongs to another SAE.", "leave out the SAE or pick its preset."
            )
    else:
        if not a.sae:
            raise SteeringError("No SAE given.", "mistudio steer SAE --feature I:S --prompt TEXT")
        sae, cfg = a.sae, SteerConfig()
    changes = given(SteerConfig, a)  # the settings given as flags, over the preset's or the defaults
    specs = [f.partition(":") for f in a.feature]
    auto = [i for i, _, st in specs if st.strip().lower() == "auto"]
    if len(auto) > 1:
        raise SteeringError(
            "Only one feature at a time can have an automatic strength.", "give the others numbers."
        )
    if a.feature:  # the auto feature starts at 0 until the sweep finds its strength
        changes["features"] = [
            list(x)
            for x in parse_features([f"{i}:0" if i in auto else f"{i}{sep}{st}" for i, sep, st in specs])
        ]
    cfg = dataclasses.replace(cfg, **changes)
    if auto:
        tuned = _auto(ws, sae, cfg, int(auto[0]), a, out)
        if tuned is None:
            return
        cfg = tuned
    if a.save_preset:
        save_preset(ws, a.save_preset, sae, cfg)
    if a.strengths:
        rows = sweep(ws, sae, cfg, [float(x) for x in a.strengths.split(",")])
        out.summary(
            {"sweep": [r.to_dict() for r in rows]},
            "\n".join(f"{r.strength:>8g}  KL {r.kl_mean:.3f}  {r.steered!r}" for r in rows),
        )
        return
    r = steer(ws, sae, cfg)
    out.summary(
        {
            k: v
            for k, v in r.to_dict().items()
            if k in ("unsteered", "steered", "metrics", "features", "method", "diff")
        },
        describe_steer(r),
    )


def describe_steer(r: SteerResult) -> str:
    """A steered generation in words: both texts, KL, fluency by the one rule, perplexity, activations."""
    m, f = r.metrics, r.metrics.fluency
    text = [
        f"prompt:    {r.prompt!r}",
        f"unsteered: {r.unsteered!r}",
        f"steered:   {r.steered!r}",
        f"KL(steered || unsteered) mean {m.kl_mean:.3f} over {len(m.kl_per_position)} positions"
        + (f"; meaning kept (hidden-state cosine) {m.similarity:.3f}" if m.similarity is not None else ""),
        "fluency (lower-cased perplexity, repeated word trigrams): unsteered "
        f"{f.unsteered.perplexity:.1f}, {f.unsteered.repetition:.0%}; steered {f.steered.perplexity:.1f}, "
        f"{f.steered.repetition:.0%}: {'fluent' if f.fluent else 'NOT fluent'} ({f.rule})",
    ]
    if m.perplexity_steered is not None and m.perplexity_unsteered is not None:
        text.append(
            f"the {m.reference} read by the unsteered and the steered model: perplexity "
            f"{m.perplexity_unsteered:.2f} -> {m.perplexity_steered:.2f}"
        )
    for i, v in m.feature_activation.items():
        text.append(f"feature {i}: mean activation {v.before:.3f} -> {v.after:.3f}")
    if m.downstream is not None:
        d = m.downstream
        text.append(f"at {d.hook}, read through {d.name!r}:")
        for i, x in d.matched.items():
            near = f"feature {x.index} (decoder cosine {x.cosine:.2f})"
            if x.cosine is not None and x.cosine < d.no_match:
                near += ", no close match"
            text.append(f"  feature {i}'s nearest, {near}: {x.before:.3f} -> {x.after:.3f}")
        raised = ", ".join(f"{x.index} ({x.before:.2f} -> {x.after:.2f})" for x in d.most_raised)
        text.append(f"  raised most: {raised or 'none'}")
    return "\n".join(text)


def _auto(
    ws: Workspace, sae: str, cfg: SteerConfig, feature: int, a: argparse.Namespace, out
) -> SteerConfig | None:
    """Find the strength of ``feature`` by the fluency sweep, print the sweep, and return the config to steer
    with (None when no strength stays fluent)."""
    from ..steering import auto_strength

    bound = {
        k: v
        for k, v in {"max_perplexity": a.max_perplexity, "max_repetition": a.max_repetition}.items()
        if v is not None
    }
    r = auto_strength(
        ws,
        sae,
        cfg,
        feature=feature,
        **bound,
        on_row=None
        if out.as_json
        else lambda row: out.line(
            {},
            f"  strength {row.strength:8.2f} ({row.relative:.0%} of the residual norm): "
            "lower-cased perplexity "
            f"{row.fluency.perplexity:7.1f}, repeated word trigrams {row.fluency.repetition:.0%}  "
            f"{'fluent' if row.fluent else 'NOT fluent'}  {row.text[:70]!r}",
        ),
    )
    head = (
        f"automatic strength for feature {feature}: the largest whose text stays {r.rule} "
        f"(= {r.bound.perplexity_limit:.1f}); residual norm {r.residual_norm:.1f}"
    )
    if r.strength is None:
        out.summary(
            {"auto": r.to_dict(), "unsteered": r.unsteered, "steered": None},
            head + "\n" + (r.note or "") + f"\nunsteered: {r.unsteered!r}",
        )
        return None
    out.line({"auto": r.to_dict()}, head + f": {r.strength:.2f} ({r.relative:.0%} of the residual norm)")
    feats = [[i, r.strength if i == feature else s] for i, s in cfg.features]
    return dataclasses.replace(cfg, features=feats)


def register(sub, cmd) -> None:
    sp = cmd(
        sub,
        "steer",
        cmd_steer,
        "generate with and without steering by SAE features, side by side, with metrics",
    )
    sp.add_argument("sae", nargs="?", default=None)
    sp.add_argument(
        "--feature",
        action="append",
        default=[],
        metavar="I[:S]",
        help="feature index and strength (repeatable); I:auto finds the largest strength that stays fluent",
    )
    sp.add_argument(
        "--max-perplexity",
        type=float,
        default=None,
        help="auto: fluency bound, the steered text's perplexity as a multiple of the unsteered text's "
        "(default: the fluency rule's own, printed with the sweep)",
    )
    sp.add_argument(
        "--max-repetition", type=float, default=None, help="auto: bound on the share of repeated trigrams"
    )
    add_config_flags(sp, SteerConfig, skip=("features",))
    sp.add_argument("--strengths", default=None, help="comma-separated strengths: a sweep table instead")
    sp.add_argument("--preset", default=None, help="start from a saved preset")
    sp.add_argument("--save-preset", default=None, metavar="NAME", help="save these settings as a preset")
