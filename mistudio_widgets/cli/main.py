"""The ``mistudio`` command line: the same engine calls and config dataclasses as the widgets.

With ``--json`` every progress event is printed as one JSON object per line, and the last line is
a summary object (or ``{"error": ..., "fix": ...}``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Any, Callable

from ..core.configs import (
    DEFAULT,
    CaptureConfig,
    DatasetConfig,
    ModelConfig,
    TokenizeConfig,
    TrainConfig,
    field_help,
)
from ..core.errors import MistudioError
from ..core.jobs import Status
from ..core.progress import ProgressEvent, TqdmProgress
from ..core.recipes import DEMO_HOOK
from ..core.sources import read_small_file
from ..core.workspace import Workspace
from .config_flags import add_config_flags, config_from_args, given, no_alias_loader
from .read_only import read_only


class Output:
    def __init__(self, as_json: bool):
        self.as_json = as_json
        self.progress: Callable[[ProgressEvent], None] = self._json_progress if as_json else TqdmProgress()

    def _json_progress(self, ev: ProgressEvent) -> None:
        print(json.dumps({"event": "progress", **ev.to_dict()}), flush=True)

    def line(self, obj: dict[str, Any], text: str) -> None:
        print(json.dumps(obj, default=str) if self.as_json else printable(text), flush=True)

    def summary(self, obj: dict[str, Any], text: str) -> None:
        self.line({"summary": True, **obj}, text)


_CONTROL = {
    **{c: f"\\x{c:02x}" for c in [*range(0x00, 0x09), *range(0x0B, 0x20), *range(0x7F, 0xA0)]},
    # bidirectional controls (right-to-left overrides can make a name read as another) and invisible marks
    **{c: f"\\u{c:04x}" for c in [0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)]},
}


def printable(text: str) -> str:
    """``text`` for a terminal: control characters (C0 and C1: escape sequences in labels, names or model
    answers) shown as \\xNN, bidirectional controls as \\uNNNN, instead of acted on; line breaks and tabs
    kept."""
    return text.translate(_CONTROL)


_CELL = {**_CONTROL, 0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r"}
ODD_META = "(metadata not as expected)"


def _table(rows: list[list[Any]], head: list[str]) -> str:
    rows = [[str(c).translate(_CELL) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*head), *(fmt.format(*r) for r in rows)])


def _artifact_line(a) -> dict[str, Any]:
    return {
        "id": a.id,
        "kind": a.kind,
        "name": a.name,
        "path": str(a.path) if a.path else None,
        "parent": a.parent,
    }


# -- commands ---------------------------------------------------------------------------------
def cmd_datasets_add(ws: Workspace, a: argparse.Namespace, out: Output) -> None:
    from ..data.datasets import add_dataset

    cfg = config_from_args(DatasetConfig, a, source=a.source, token=os.environ.get("HF_TOKEN"))
    art = add_dataset(ws, cfg, progress=out.progress)
    st, prov = art.meta["stats"], art.meta["provenance"]
    notes = [
        f"\n  skipped {v['records']} record(s) holding {why} (the first is record {v['first']})"
        for why, v in st.get("skipped", {}).items()
    ]
    if "header" in prov:
        head = prov["header"]
        notes.append(
            f"\n  CSV header row: {', '.join(head) if isinstance(head, list) else head}; "
            f"text column {art.meta['text_field']!r}"
        )
    out.summary(
        {**_artifact_line(art), "stats": st},
        f"dataset {art.name} ({art.id}): {st['documents']} documents, {st['characters']} characters"
        + "".join(notes),
    )


def cmd_datasets_tokenize(ws: Workspace, a: argparse.Namespace, out: Output) -> None:
    from ..data.datasets import PIECE_CHARS, resolve_dataset, tokenize_dataset
    from ..data.models import resolve_model

    ds = resolve_dataset(ws, a.dataset, progress=out.progress)
    model = resolve_model(ws, a.model, progress=out.progress)
    cfg = config_from_args(TokenizeConfig, a)
    art = tokenize_dataset(ws, ds, model, cfg, name=a.name, progress=out.progress)
    st = art.meta["stats"]
    top = ", ".join(repr(t["token"]) for t in st["top_tokens"][:8])
    out.summary(
        {**_artifact_line(art), "stats": st},
        f"tokenization {art.name} ({art.id}): {st['tokens']} tokens in {st['sequences']} sequences of "
        f"{st['context_size']}; {st['documents_kept']}/{st['documents']} documents kept; top tokens {top}"
        + (
            f"\n  {st['documents_tokenized_in_pieces']} document(s) longer than {PIECE_CHARS:,} "
            "characters were "
            "tokenized in pieces cut at spaces"
            if st.get("documents_tokenized_in_pieces")
            else ""
        ),
    )


def _detail(x) -> str:
    st, info = x.meta.get("stats", {}), x.meta.get("info", {})
    return (
        f"{st.get('documents', '')} docs"
        if x.kind == "dataset"
        else f"{st.get('tokens', '')} tokens, ctx {st.get('context_size', '')}"
        if x.kind == "tokenization"
        else f"{info.get('family')} {info.get('layers')} layers d_model {info.get('d_model')}"
        if x.kind == "model"
        else f"{x.meta.get('filled_sequences', 0)}/{x.meta.get('sequences')} sequences, "
        f"{x.meta.get('bytes', 0) / 2**20:.0f} MiB"
        if x.kind == "activation_cache"
        else ""
    )


def cmd_list(kind: str) -> Callable[[Workspace, argparse.Namespace, Output], None]:
    @read_only
    def run(ws: Workspace, a: argparse.Namespace, out: Output) -> None:
        kinds = [kind] if kind != "all" else [None]
        arts = [x for k in kinds for x in ws.list(k)]
        if kind == "dataset":
            arts += ws.list("tokenization")
        for x in arts:
            if out.as_json:
                out.line({**_artifact_line(x), "meta": x.meta}, "")
        rows = []
        for x in arts:
            try:
                detail = x.meta.get("refused_because") or _detail(x)
            except (AttributeError, TypeError, ValueError):  # a row changed by hand or by another program
                detail = ODD_META
            rows.append([x.id, x.kind, x.name, detail])
        out.summary(
            {"count": len(arts), "workspace": str(ws.root)},
            _table(rows, ["id", "kind", "name", "detail"]) if rows else f"nothing yet in {ws.root}",
        )

    return run


def cmd_models_add(ws: Workspace, a: argparse.Namespace, out: Output) -> None:
    from ..data.models import add_model, model_info

    cfg = config_from_args(ModelConfig, a, source=a.source, token=os.environ.get("HF_TOKEN"))
    art = add_model(ws, cfg, progress=out.progress)
    info = model_info(ws, art)
    out.summary(
        {**_artifact_line(art), "info": info},
        f"model {art.name} ({art.id}): {info['family']}, {info['layers']} layers, d_model {info['d_model']}, "
        f"{info['heads']} heads, vocab {info['vocab']}, {info['parameters'] or 0:,} parameters, "
        f"~{info['memory']['total_gib']:.2f} GiB to load",
    )


def cmd_models_hooks(ws: Workspace, a: argparse.Namespace, out: Output) -> None:
    from ..data.models import load_model, resolve_model

    lm = load_model(ws, resolve_model(ws, a.model, progress=out.progress))
    names = lm.hook_names()
    out.summary({"model": lm.name, "hooks": names}, "\n".join(names))


@read_only
def cmd_show(ws: Workspace, a: argparse.Namespace, out: Output) -> None:
    art = ws.get(a.ref)
    out.summary({**_artifact_line(art), "meta": art.meta}, json.dumps(art.to_dict(), indent=2, default=str))


def cmd_rename(ws: Workspace, a: argparse.Namespace, out: Output) -> None:
    art = ws.rename(a.ref, a.new_name)
    out.summary(_artifact_line(art), f"renamed {art.id} to {art.name}")


def cmd_delete(ws: Workspace, a: argparse.Namespace, out: Output) -> None:
    removed = ws.delete(a.ref, cascade=a.cascade, force=a.force)
    out.summary({"deleted": removed}, f"deleted {', '.join(removed)}")


def cmd_capture(ws: Workspace, a: argparse.Namespace, out: Output) -> None:
    from ..data.activations import capture_stats
    from ..data.datasets import tokens_for
    from ..data.models import resolve_model

    model = resolve_model(ws, a.model, progress=out.progress)
    tok = tokens_for(ws, a.dataset, model, a.context_size, progress=out.progress)
    cfg = config_from_args(CaptureConfig, a)
    res = capture_stats(ws, model, tok, cfg, progress=out.progress)
    out.summary(res.to_dict(), res.describe())


def cmd_demo(ws: Workspace, a: argparse.Namespace, out: Output) -> None:
    """The whole main job on the embedded defaults (see ``demo``)."""
    from .demo import run_demo

    run_demo(ws, a, out)


def _train_configs(a: argparse.Namespace):
    """TrainConfigs from --config (a mapping, optionally with `saes: [...]` for several SAEs from one
    harvest) and the flags (which apply to every SAE)."""
    import yaml

    from ..core.configs import TrainConfig, from_dict

    data: dict[str, Any] = {}
    if a.config:
        text = read_small_file(a.config, "config file", 1 << 20)
        try:
            data = yaml.load(text, Loader=no_alias_loader()) or {}
        except (yaml.YAMLError, RecursionError) as exc:
            raise MistudioError(
                f"Could not read the config file {a.config}: {exc}",
                "check the path and the YAML/JSON syntax.",
            ) from exc
        if not isinstance(data, dict):
            raise MistudioError(
                f"{a.config} must hold a mapping of TrainConfig settings.", "write e.g. `steps: 300`."
            )
    data.update(given(TrainConfig, a))
    return from_dict(TrainConfig, data).members()


def cmd_train(ws: Workspace, a: argparse.Namespace, out: Output) -> None:
    import signal

    from ..core.jobs import JobCancelled, JobControl
    from ..train.training import train_many

    control = JobControl()

    def on_sigint(_sig, _frame):
        if control.cancelled:
            raise KeyboardInterrupt
        print(
            "stopping after this step or harvest batch (checkpointing); press Ctrl-C again to abort",
            file=sys.stderr,
        )
        control.cancel()

    previous = signal.signal(signal.SIGINT, on_sigint)
    cfgs = None if a.resume else _train_configs(a)
    started = lambda run: out.line({"run_id": run.id, "name": run.name}, f"run {run.name} ({run.id})")  # noqa: E731
    try:
        results = train_many(
            ws, cfgs, resume=a.resume, progress=out.progress, control=control, on_start=started
        )
    except JobCancelled:
        mine = lambda r: isinstance(r.meta.get("owner"), dict) and r.meta["owner"].get("pid") == os.getpid()  # noqa: E731
        runs = [r.id for r in ws.list("run") if r.meta.get("status") == Status.INTERRUPTED and mine(r)]
        out.summary(
            {"status": Status.INTERRUPTED, "runs": runs},
            "interrupted after a checkpoint; resume with: "
            + "; ".join(f"mistudio train --resume {r}" for r in runs or ["RUN"]),
        )
        raise SystemExit(130) from None
    finally:
        signal.signal(signal.SIGINT, previous)
    from ..core import distributed

    if not distributed.is_main():  # under torchrun only the main process reports
        return
    for res in results[:-1]:
        m = res.metrics
        out.line(
            {
                "run_id": res.run_id,
                "sae_id": res.sae_id,
                "path": res.path,
                "status": res.status,
                "metrics": m,
            },
            f"SAE {res.sae_id} at {res.path}: EV {m['explained_variance']:.3f}, L0 {m['l0']:.1f}",
        )
    res = results[-1]
    m = res.metrics
    quality = _quality_after_training(ws, res.sae_id, out)
    out.summary(
        {
            "run_id": res.run_id,
            "sae_id": res.sae_id,
            "path": res.path,
            "status": res.status,
            "metrics": m,
            "quality": [dataclasses.asdict(q) for q in quality],
        },
        f"SAE {res.sae_id} at {res.path}\n  explained variance {m['explained_variance']:.3f}, L0 "
        f"{m['l0']:.1f}, "
        f"MSE {m['mse']:.4g}, dead {m['dead_fraction']:.1%}, CE recovered {m['ce_recovered']:.3f}"
        + "".join(f"\n  {q.describe()}" for q in quality),
    )


def _quality_after_training(ws: Workspace, sae_id: str | None, out: Output) -> list:
    """The new SAE's figures on its own held-out rows and on text of another kind (none for a
    transcoder, or when the run ended without an SAE)."""
    from ..evaluate import sae_quality

    if sae_id is None or ws.get(sae_id, "sae").meta.get("hook_out"):
        return []
    try:
        return sae_quality(ws, sae_id, progress=out.progress)
    except MistudioError as exc:  # the SAE is saved whatever happens here: say why, and keep the exit code
        out.line({"quality_error": str(exc)}, f"  (quality not measured: {exc})")
        return []


@read_only
def cmd_saes_list(ws: Workspace, a: argparse.Namespace, out: Output) -> None:
    arts = ws.list("sae")
    rows = []
    for x in arts:
        if out.as_json:
            out.line({**_artifact_line(x), "meta": x.meta}, "")
        try:
            m = x.meta.get("metrics", {})
            rows.append(
                [
                    x.id,
                    x.name,
                    x.meta.get("architecture"),
                    x.meta.get("hook"),
                    x.meta.get("d_sae"),
                    f"{m.get('explained_variance', float('nan')):.3f}",
                    f"{m.get('l0', float('nan')):.1f}",
                ]
            )
        except (AttributeError, TypeError, ValueError):
            rows.append([x.id, x.name, ODD_META, "", "", "", ""])
    out.summary(
        {"count": len(arts)},
        _table(rows, ["id", "name", "arch", "hook", "d_sae", "EV", "L0"]) if rows else "no SAEs yet",
    )


def cmd_repair(ws: Workspace, a: argparse.Namespace, out: Output) -> None:
    got = ws.repair()
    lines = [
        f"registered the {d['kind']} {d['name']} ({d['id']})"
        + ("" if d["from_record"] else ", named after its folder (it had no record)")
        for d in got["registered"]
    ]
    lines += [f"skipped {s['folder']}: {s['why']}" for s in got["skipped"]]
    lines.append(
        f"{len(got['registered'])} artifact(s) registered again in {ws.root}"
        + ("; labels and metric history lived only in the lost catalog" if got["registered"] else "")
    )
    out.summary(got, "\n".join(lines))


# -- parser -----------------------------------------------------------------------------------
TRAIN_ALIASES = {"architecture": ["arch"], "l1_coefficient": ["l1"], "expansion_factor": ["expansion"]}


def build_parser() -> argparse.ArgumentParser:
    """The command line: one registration per command group (each group registers its own commands)."""
    from .features import register as register_features
    from .features import register_labels
    from .share import register as register_share
    from .steer import register as register_steer

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--workspace",
        default=argparse.SUPPRESS,
        help="workspace folder (default: $MISTUDIO_HOME or ./mistudio-workspace)",
    )
    common.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print JSON lines and a final summary object",
    )
    p = argparse.ArgumentParser(
        prog="mistudio", description="Sparse-autoencoder interpretability from the command line."
    )
    p.add_argument("--workspace", default=None)
    p.add_argument("--json", action="store_true", default=False)
    sub = p.add_subparsers(dest="command", required=True)

    def cmd(parent, name: str, fn, help: str) -> argparse.ArgumentParser:
        sp = parent.add_parser(name, parents=[common], help=help, description=help)
        sp.set_defaults(fn=fn)
        return sp

    for register in (
        _register_datasets,
        _register_models,
        _register_capture,
        _register_demo,
        _register_train,
        register_features,
        register_labels,
        register_steer,
        register_share,
        _register_workspace,
    ):
        register(sub, cmd)
    return p


def _register_datasets(sub, cmd) -> None:
    ds = sub.add_parser("datasets", help="add, tokenize and list datasets").add_subparsers(
        dest="sub", required=True
    )
    sp = cmd(ds, "add", cmd_datasets_add, "add a dataset from 'default', a hub id or local files")
    sp.add_argument("source", help=field_help(DatasetConfig)["source"])
    add_config_flags(sp, DatasetConfig, skip=("source", "token"))
    sp = cmd(
        ds,
        "tokenize",
        cmd_datasets_tokenize,
        "tokenize a dataset into packed sequences with a model's tokenizer",
    )
    sp.add_argument("dataset")
    sp.add_argument("--model", default=DEFAULT, help="the model whose tokenizer to use (default: default)")
    sp.add_argument("--name", default=None, help="name of the tokenization (derived when empty)")
    add_config_flags(sp, TokenizeConfig, aliases={"prepend_bos": ["bos"]})
    cmd(ds, "list", cmd_list("dataset"), "list datasets and their tokenizations")


def _register_models(sub, cmd) -> None:
    ms = sub.add_parser("models", help="add and list models").add_subparsers(dest="sub", required=True)
    sp = cmd(
        ms, "add", cmd_models_add, "add a model from 'default', a hub id, a local folder or a .gguf file"
    )
    sp.add_argument("source", help=field_help(ModelConfig)["source"])
    add_config_flags(sp, ModelConfig, skip=("source", "token"))
    cmd(ms, "list", cmd_list("model"), "list models")
    sp = cmd(ms, "hooks", cmd_models_hooks, "list a model's hook points")
    sp.add_argument("model", nargs="?", default=DEFAULT)


def _register_capture(sub, cmd) -> None:
    sp = cmd(sub, "capture", cmd_capture, "capture activations at a hook and print their statistics")
    sp.add_argument("--model", default=DEFAULT, help="the model (default: default)")
    sp.add_argument("--dataset", default=DEFAULT, help="a dataset (tokenized on demand) or a tokenization")
    sp.add_argument("--context-size", type=int, default=128, help="tokens per sequence if tokenized")
    add_config_flags(sp, CaptureConfig)


def _register_demo(sub, cmd) -> None:
    sp = cmd(
        sub,
        "demo",
        cmd_demo,
        "the main job on the embedded defaults: train an SAE, extract, find, label and steer a feature, "
        "export",
    )
    sp.add_argument("--hook", default=DEMO_HOOK, help="where the demo SAE reads")
    sp.add_argument("--tokens", type=int, default=16384, help="tokens of the demo's capture statistics")
    sp.add_argument("--batch-size", type=int, default=16, help="sequences per forward pass")
    sp.add_argument("--context-size", type=int, default=128, help="tokens per sequence")
    sp.add_argument("--train-steps", type=int, default=100, help="steps of the demo SAE")
    sp.add_argument("--batch-tokens", type=int, default=4096, help="activations per training step")
    sp.add_argument(
        "--train-tokens",
        type=int,
        default=204_800,
        help="distinct training tokens, harvested once into the activation cache and reused each epoch",
    )
    sp.add_argument("--expansion", type=int, default=8, help="d_sae = expansion x d_model")
    sp.add_argument("--extract-tokens", type=int, default=32768, help="tokens of the feature extraction")
    sp.add_argument("--steer-tokens", type=int, default=40, help="tokens generated with and without steering")


def _register_train(sub, cmd) -> None:
    sp = cmd(sub, "train", cmd_train, "train an SAE (settings from --config and flags; TrainConfig fields)")
    sp.add_argument("--config", default=None, help="YAML or JSON file of TrainConfig settings")
    sp.add_argument(
        "--resume", default=None, metavar="RUN", help="resume an interrupted run from its last checkpoint"
    )
    add_config_flags(sp, TrainConfig, aliases=TRAIN_ALIASES)


def _register_workspace(sub, cmd) -> None:
    """The workspace's own commands: list, show, rename, repair, delete, and the SAE library."""
    saes = sub.add_parser("saes", help="the SAE library").add_subparsers(dest="sub", required=True)
    cmd(saes, "list", cmd_saes_list, "list SAEs with their final metrics")
    cmd(sub, "list", cmd_list("all"), "list everything in the workspace")
    sp = cmd(sub, "show", cmd_show, "show one artifact")
    sp.add_argument("ref")
    sp = cmd(sub, "rename", cmd_rename, "rename an artifact")
    sp.add_argument("ref")
    sp.add_argument("new_name")
    cmd(sub, "repair", cmd_repair, "register artifact folders that the catalog lost, from their own metadata")
    sp = cmd(sub, "delete", cmd_delete, "delete an artifact")
    sp.add_argument("ref")
    sp.add_argument("--cascade", action="store_true", help="also delete what was derived from it")
    sp.add_argument(
        "--force",
        action="store_true",
        help="also delete a job marked running on another machine (check there first that it stopped)",
    )


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    out = Output(args.json)
    try:
        ws = Workspace(
            args.workspace, repair=args.fn is cmd_repair, existing=getattr(args.fn, "read_only", False)
        )
        args.fn(ws, args, out)
    except MistudioError as exc:
        if out.as_json:
            print(json.dumps({"error": exc.problem, "fix": exc.fix, "type": type(exc).__name__}), flush=True)
        else:
            print(
                printable(f"error: {exc.problem}" + (f"\n  fix: {exc.fix}" if exc.fix else "")),
                file=sys.stderr,
            )
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
