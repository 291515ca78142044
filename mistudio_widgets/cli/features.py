"""``mistudio extract`` and ``mistudio features show|fire|search|label-set``: feature discovery from the
command line (registered into the parser of :mod:`mistudio_widgets.cli`)."""

from __future__ import annotations

import argparse
from typing import Any

from ..core.configs import ExtractConfig, LabelConfig
from ..core.jobs import Status
from ..core.workspace import Workspace
from .config_flags import add_config_flags, config_from_args
from .read_only import read_only

OPENAI_DEFAULT_MODEL = "gpt-4o-mini"  # the explainer asked of an endpoint when --model is not given


def _spark(values: list[float], peak: float) -> str:
    bars = " ▁▂▃▄▅▆▇█"
    return "".join(bars[min(int(v / peak * 8 + 0.999), 8)] if peak > 0 and v > 0 else " " for v in values)


def cmd_extract(ws: Workspace, a: argparse.Namespace, out) -> None:
    from ..features import extract

    if a.resume:
        ext = extract(ws, None, resume=a.resume, progress=out.progress)
    else:
        if not a.sae:
            raise SystemExit("mistudio extract: give an SAE (or --resume EXTRACTION)")
        cfg = config_from_args(ExtractConfig, a)
        ext = extract(ws, a.sae, cfg, progress=out.progress)
    s = ext.meta.get("summary") or {}
    if ext.meta.get("status") != Status.DONE:
        out.summary(
            {"extraction_id": ext.id, "status": ext.meta.get("status")},
            f"extraction {ext.id} {ext.meta.get('status')}; resume with: mistudio extract --resume {ext.id}",
        )
        return
    out.summary(
        {"extraction_id": ext.id, "sae_id": ext.parent, "path": str(ext.path), "status": Status.DONE, **s},
        f"extraction {ext.name} ({ext.id}): {s['tokens']:,} tokens; {s['alive']:,} of {s['d_sae']:,} "
        "features "
        f"fired ({s['dead']:,} never); mean L0 {s['mean_l0']:.1f}\n  files: {ext.path}",
    )


@read_only
def cmd_features_show(ws: Workspace, a: argparse.Namespace, out) -> None:
    from ..features import feature_detail

    d = feature_detail(ws, a.sae, a.index, max_examples=a.examples)
    if out.as_json:
        rec = {k: v for k, v in d.items() if k not in ("examples", "quantile_examples")}
        rec["examples"] = [
            {"tokens": e["tokens"], "values": e["values"], "value": e["value"]} for e in d["examples"]
        ]
        rec["quantile_examples"] = [
            {
                "range": g["range"],
                "examples": [{"tokens": e["tokens"], "values": e["values"]} for e in g["examples"]],
            }
            for g in d["quantile_examples"]
        ]
        out.summary(rec, "")
        return
    lines = [
        f"feature {d['index']}" + (f": {d['label']}" if d["label"] else ""),
        f"  fires on {d['frequency']:.3%} of tokens; mean {d['mean']:.3g}, max {d['max']:.3g}, "
        f"median {d['quantiles']['q50']:.3g}, p99 {d['quantiles']['q99']:.3g}",
        f"  histogram 0..{d['max']:.3g}: "
        f"{_spark(d['histogram']['counts'], max(d['histogram']['counts']) or 1)}",
    ]
    if "logits" in d:
        lines.append("  promotes: " + " ".join(repr(x["token"]) for x in d["logits"]["positive"][:10]))
        lines.append("  suppresses: " + " ".join(repr(x["token"]) for x in d["logits"]["negative"][:10]))
    lines.append(
        "  neighbours: " + ", ".join(f"{n['index']} ({n['cosine']:.2f})" for n in d["neighbours"][:5])
    )
    lines.append("  top examples ([[peak]]):")
    for e in d["examples"][: a.examples or 10]:
        text = "".join(f"[[{t}]]" if i == e["peak"] else t for i, t in enumerate(e["tokens"]))
        lines.append(f"    {e['value']:7.3f}  {text!r}")
    out.summary({}, "\n".join(lines))


def _read_texts(path: str) -> list[str]:

    from ..core.sources import read_small_file
    from ..features import FeatureError

    lines = read_small_file(path, "texts file", 1 << 20, FeatureError).splitlines()
    texts = [x for x in lines if x.strip()]
    if not texts:
        raise FeatureError(f"The texts file {path!r} holds no text.", "put one text per line.")
    return texts


def _marked(tokens: list[str], values: list[float]) -> str:
    return "".join(f"[[{t}]]" if v > 0 else t for t, v in zip(tokens, values))


def cmd_features_fire(ws: Workspace, a: argparse.Namespace, out) -> None:
    from ..features import contrast, fire

    against = list(a.contrast or []) + [t for f in a.contrast_file or [] for t in _read_texts(f)]
    if against or a.ordinary:
        return _print_contrast(
            contrast(ws, a.sae, a.text, against or None, top=a.top, dense_threshold=a.dense), a, out
        )
    if len(a.text) > 1:
        raise SystemExit(
            "mistudio features fire: several --text need --contrast, --contrast-file or --ordinary"
        )
    r = fire(ws, a.sae, a.text[0], top=a.top, dense_threshold=a.dense)
    if out.as_json:
        out.summary(
            {
                "features": [
                    {k: f[k] for k in ("index", "activation", "relative", "label")}
                    for f in r["features"][: a.top]
                ],
                "tokens": r["tokens"],
                "ranking": r["ranking"],
                "note": r["note"],
            },
            "",
        )
        return
    lines = ["per token (strongest features, activation / its max):"]
    for t, feats in zip(r["tokens"], r["per_token"]):
        lines.append(
            f"  {t!r:>16}  "
            + ", ".join(f"{f['index']}:{f['activation']:.2f}/{f['relative']:.0%}" for f in feats[:5])
        )
    lines.append(
        f"features over the text (ranked by {r['ranking']} peak; {r['left_out_dense']} dense features "
        f"firing on > {r['dense_threshold']:.0%} of tokens left out):"
    )
    for f in r["features"][: a.top]:
        lines.append(
            f"  {f['index']:>6}  peak {f['activation']:.3f} ({f['relative']:.0%} of its max) at "
            f"{r['tokens'][f['token']]!r}" + (f"  {f['label']}" if f["label"] else "")
        )
    if r["note"]:
        lines.append("note: " + r["note"])
    out.summary({}, "\n".join(lines))


def _print_contrast(r: dict[str, Any], a: argparse.Namespace, out) -> None:
    if out.as_json:
        out.summary(
            {
                k: r[k]
                for k in (
                    "features",
                    "steer_with",
                    "texts",
                    "contrast",
                    "ranking",
                    "dense_threshold",
                    "left_out_dense",
                    "note",
                )
            },
            "",
        )
        return
    lines = [
        f"features that fire on the text(s) and not on the contrast ({r['ranking']} ranking; "
        f"{r['left_out_dense']} dense features firing on > {r['dense_threshold']:.0%} of tokens left out):",
        "   index  score  fires on text / contrast  mean act. (of max) text / contrast  aligned",
    ]
    for f in r["features"]:
        lines.append(
            f"  {f['index']:>6}  {f['score']:.2f}   {f['rate']:6.0%} / {f['rate_contrast']:<6.0%}"
            f"            {f['relative']:6.0%} / {f['relative_contrast']:<6.0%}         {f['alignment']:5.2f}"
            + (f"  {f['label']}" if f["label"] else "")
        )
    if r["features"]:
        best = r["features"][0]["index"]
        lines.append(f"feature {best}, tokens where it fires marked [[ ]]:")
        for side in ("texts", "contrast"):
            for row in r[side]:
                lines.append(f"  {side[:4]:<5} {_marked(row['tokens'], row['values'][best])!r}")
        lines.append(
            f"to steer towards the text: feature {r['steer_with']} (of the top features, its decoder "
            "direction is "
            "the best aligned with the shift of the activations from the contrast to the text)"
        )
    else:
        lines.append("  no feature fires more on the text than on the contrast")
    if r["note"]:
        lines.append("note: " + r["note"])
    out.summary({}, "\n".join(lines))


@read_only
def cmd_features_search(ws: Workspace, a: argparse.Namespace, out) -> None:
    from ..features import search

    hits = search(ws, a.sae, a.query, limit=a.limit)
    out.summary(
        {"features": hits},
        "\n".join(f"{h['index']:>6}  ({h['match']})  {h['label'] or ''}" for h in hits)
        or "no feature matches",
    )


def cmd_features_attribute(ws: Workspace, a: argparse.Namespace, out) -> None:
    from ..features import attribute

    r = attribute(ws, a.sae, a.prompt, a.target, top=a.top, ablate=a.ablate)
    lines = [
        f"{r.target!r} after {r.prompt!r}: logit {r.logit:.2f}; {r.firing} features fired at {r.hook}"
        + (f" ({r.target_note})" if r.target_note else ""),
        f"{'feature':>8}  {'attribution':>11}  {'exact':>7}  label",
    ]
    for row in r.rows:
        name = "error" if row.index < 0 else str(row.index)
        exact = f"{row.exact:+7.3f}" if row.exact is not None else f"{'':>7}"
        lines.append(f"{name:>8}  {row.attribution:+11.3f}  {exact}  {row.label or ''}")
    lines.append(
        "attribution: activation x gradient (the logit change it predicts); exact: the logit minus the logit "
        "with the feature zeroed"
        + (f"; r = {r.correlation:.2f} over the ablated rows" if r.correlation is not None else "")
    )
    out.summary(r.to_dict(), "\n".join(lines))


def cmd_features_impact(ws: Workspace, a: argparse.Namespace, out) -> None:
    import numpy as np

    from ..features import ablation_impact

    r = ablation_impact(ws, a.sae, tokens=a.tokens, exact=a.exact, progress=out.progress)
    order = np.argsort(-r.estimate)
    firing = [int(i) for i in np.argsort(np.abs(r.estimate)) if r.fired[i] > 0]
    lines = [
        f"loss change (nats per token) when each feature is zeroed where it fires, over {r.tokens:,} "
        f"held-out tokens (the model's own loss {r.loss:.3f})",
        "critical (removing them hurts most): "
        + ", ".join(f"{int(i)} ({r.estimate[i]:+.2e})" for i in order[: a.show]),
        "redundant (they fire, removing them changes least): "
        + ", ".join(f"{i} ({r.estimate[i]:+.1e})" for i in firing[: a.show]),
        f"checked exactly on {len(r.exact_index)} features: r = "
        + (f"{r.correlation:.2f}" if r.correlation is not None else "–"),
    ]
    out.summary({**r.summary(), "redundant": firing[: a.show]}, "\n".join(lines))


def cmd_features_label(ws: Workspace, a: argparse.Namespace, out) -> None:
    from ..features import set_label

    lid = set_label(ws, a.sae, a.index, a.label)
    out.summary({"label_id": lid, "feature": a.index, "label": a.label}, f"feature {a.index}: {a.label}")


def register(sub, cmd) -> None:
    sp = cmd(sub, "extract", cmd_extract, "extract feature statistics, examples and logit lens for an SAE")
    sp.add_argument("sae", nargs="?", default=None)
    add_config_flags(sp, ExtractConfig)
    sp.add_argument("--resume", default=None, metavar="EXTRACTION", help="resume an interrupted extraction")
    fs = sub.add_parser("features", help="look at an SAE's features").add_subparsers(
        dest="sub", required=True
    )
    sp = cmd(fs, "show", cmd_features_show, "a feature's statistics, logits, neighbours and top examples")
    sp.add_argument("sae")
    sp.add_argument("index", type=int)
    sp.add_argument(
        "--examples", type=int, default=None, help="top examples to show (all kept by default with --json)"
    )
    sp = cmd(
        fs,
        "fire",
        cmd_features_fire,
        "which features fire on a text (per token and overall), or on texts and not on others",
    )
    sp.add_argument("sae")
    sp.add_argument("--text", required=True, action="append", help="the text to test (repeat for several)")
    sp.add_argument(
        "--contrast",
        action="append",
        default=None,
        metavar="TEXT",
        help="rank features that fire on the text(s) and not on this one (repeatable)",
    )
    sp.add_argument(
        "--contrast-file", action="append", default=None, metavar="FILE", help="contrast texts, one per line"
    )
    sp.add_argument(
        "--ordinary",
        action="store_true",
        help="contrast with the same text(s) in ordinary case (e.g. for SHOUTING)",
    )
    sp.add_argument(
        "--dense",
        type=float,
        default=0.1,
        metavar="SHARE",
        help="leave out features firing on more than this share of extraction tokens (default 0.1)",
    )
    sp.add_argument("--top", type=int, default=10)
    sp = cmd(fs, "search", cmd_features_search, "features whose label or top logit tokens match a word")
    sp.add_argument("sae")
    sp.add_argument("query")
    sp.add_argument("--limit", type=int, default=50)
    sp = cmd(
        fs,
        "attribute",
        cmd_features_attribute,
        "which features push the model's next token (or --target) up or down, checked by ablation",
    )
    sp.add_argument("sae")
    sp.add_argument("--prompt", required=True, help="the text whose next token to explain")
    sp.add_argument("--target", default=None, help="the token to explain (default: the model's own next one)")
    sp.add_argument("--top", type=int, default=10, help="rows to show")
    sp.add_argument("--ablate", type=int, default=10, help="of them, how many to check by exact ablation")
    sp = cmd(
        fs,
        "impact",
        cmd_features_impact,
        "every feature's loss change when zeroed where it fires, on held-out text (critical vs redundant)",
    )
    sp.add_argument("sae")
    sp.add_argument("--tokens", type=int, default=32768, help="held-out tokens to measure on")
    sp.add_argument("--exact", type=int, default=20, help="strongest features to check by exact ablation")
    sp.add_argument("--show", type=int, default=10, help="features to list of each kind")
    sp = cmd(fs, "label", cmd_features_label, "set a feature's label by hand")
    sp.add_argument("sae")
    sp.add_argument("index", type=int)
    sp.add_argument("label")


__all__: list[Any] = ["register"]


def cmd_label(ws: Workspace, a: argparse.Namespace, out) -> None:
    from ..features.labeling import LabelError, label_features

    endpoint = getattr(a, "backend", "statistical") == "openai"
    cfg = config_from_args(LabelConfig, a, {"model": OPENAI_DEFAULT_MODEL} if endpoint else {})
    try:
        feats = [int(x) for x in a.features.split(",") if x.strip()] if a.features else None
    except ValueError:
        raise LabelError(
            f"--features {a.features!r} is not a list of feature indices.", "write e.g. --features 12,40,7."
        ) from None
    run = label_features(
        ws,
        a.sae,
        cfg,
        features=feats,
        top=a.top,
        all_features=a.all,
        redo=a.redo,
        progress=out.progress,
    )
    shown = run.results if not a.all else []  # --all: the distribution, not 4,000 lines
    for r in shown:
        sc = r.score
        how = "statistics" if r.method == "statistical" else r.model
        score = (
            f"  held-out score {sc.score:.2f} ± {sc.se:.2f} (chance 0.50): {sc.verdict}"
            if sc and sc.score is not None
            else f"  (not scored: {sc.reason})"
            if sc
            else ""
        )
        out.line(
            {
                "feature": r.feature,
                "label": r.label,
                "method": r.method,
                "model": r.model,
                "skipped": r.skipped,
                "scoring": sc.as_dict() if sc else None,
            },
            f"{r.feature:>6}  [{how}] {r.label or '(' + (r.skipped or '') + ')'}{score}",
        )
    methods = sorted({r.method for r in run.results if r.label})
    for m in methods:
        out.line({"distribution": run.distribution(m)}, run.describe(m))
    if cfg.scorer == "judge" and cfg.backend == "local":
        from ..features.store import JUDGE_NOTE

        out.line({}, "note: " + JUDGE_NOTE)
    n = sum(1 for r in run.results if r.label)
    out.summary(
        {"labelled": n, "seconds": round(run.seconds, 1), "held_out": run.held_out},
        f"labelled {n:,} feature(s) in {run.seconds:.0f}s"
        + ("" if run.results else " (nothing to do: already labelled this way; --redo labels again)"),
    )


def cmd_serve_chat(ws: Workspace, a: argparse.Namespace, out) -> None:
    import os

    from .chat_server import make_server

    key = os.environ.get(a.require_key_env) if a.require_key_env else None
    if a.require_key_env and not key:
        from ..core.errors import MistudioError

        raise MistudioError(
            f"--require-key-env {a.require_key_env}: that environment variable is unset or empty, so the "
            "server would answer anyone. It was not started.",
            f"set it (export {a.require_key_env}=...), or leave --require-key-env out to serve without a "
            "key.",
        )
    try:
        srv = make_server(ws, a.model, a.host, a.port, require_key=key)
    except OSError as exc:
        from ..core.errors import MistudioError

        raise MistudioError(
            f"Cannot serve on {a.host}:{a.port} ({exc.strerror}).",
            "choose another --port, or stop what uses it.",
        ) from None
    host, port = str(srv.server_address[0]), int(srv.server_address[1])
    out.line(
        {"serving": f"http://{host}:{port}/v1", "model": a.model},
        f"serving {a.model} at http://{host}:{port}/v1 (OpenAI chat-completions); Ctrl-C stops",
    )
    try:
        srv.serve_forever()
    finally:
        srv.server_close()


def register_labels(sub, cmd) -> None:
    sp = cmd(
        sub,
        "label",
        cmd_label,
        "label features automatically (statistics, or a model too), scored on held-out texts",
    )
    sp.add_argument("sae")
    sp.add_argument("--features", default=None, help="comma-separated feature indices")
    sp.add_argument(
        "--top", type=int, default=None, help="the N most frequent features, dense ones left out (default 10)"
    )
    sp.add_argument("--all", action="store_true", help="every live feature (prints the score distribution)")
    add_config_flags(sp, LabelConfig, defaults={"model": f"default (local), {OPENAI_DEFAULT_MODEL} (openai)"})
    sp.add_argument(
        "--redo", action="store_true", help="label again features this explainer already labelled"
    )
    sp = cmd(
        sub, "serve-chat", cmd_serve_chat, "serve a workspace model as an OpenAI-compatible chat endpoint"
    )
    sp.add_argument("--model", default="default")
    sp.add_argument("--host", default="127.0.0.1")
    sp.add_argument("--port", type=int, default=8000)
    sp.add_argument(
        "--require-key-env", default=None, help="require the key held in this environment variable"
    )
