"""TrainingConfigurator: a form built from the TrainConfig dataclass, with inline validation, a memory
and time estimate, and a Start button that runs training as a background job."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

import traitlets as t

from ..core import jobs
from ..core.configs import TrainConfig, from_dict, parse_grid, to_dict
from ..train.planning import check_config
from ..train.training import train
from .base import EngineWidget, Outcome, background, esm, on_kernel

BASIC = (
    "model",
    "dataset",
    "hook",
    "architecture",
    "expansion_factor",
    "k",
    "l1_coefficient",
    "optimizer",
    "lr",
    "batch_tokens",
    "steps",
    "sweep",
)
HIDDEN = ("adam_betas", "name", "saes")


def _field_kind(f: dataclasses.Field) -> tuple[str, list[str] | None]:
    hint = typing.get_type_hints(TrainConfig)[f.name]
    args = typing.get_args(hint)
    if typing.get_origin(hint) is typing.Literal:
        return "choice", list(args)
    if hint is list or typing.get_origin(hint) is list:
        return "list", None  # typed as comma-separated whole numbers
    if hint is dict or typing.get_origin(hint) is dict:
        return "grid", None  # a sweep grid typed as 'k: 16, 32; architecture: topk, batchtopk'
    base = next((a for a in args if a is not type(None)), hint) if args else hint
    kind = {bool: "bool", int: "int", float: "float", str: "str"}.get(base, "str")
    return (f"optional-{kind}" if type(None) in args else kind), None


def _whole_numbers(name: str, text: str) -> list[int]:
    try:
        return [int(p) for p in text.replace(";", ",").split(",") if p.strip()]
    except ValueError:
        raise ValueError(f"{name} takes whole numbers separated by commas, e.g. 288, 576, 1152") from None


def form_fields() -> list[dict[str, Any]]:
    """The TrainConfig fields as form descriptions (the widget renders these)."""
    out = []
    for f in dataclasses.fields(TrainConfig):
        if f.name in HIDDEN:
            continue
        kind, choices = _field_kind(f)
        out.append(
            {
                "name": f.name,
                "kind": kind,
                "choices": choices,
                "default": f.default if f.default is not dataclasses.MISSING else f.default_factory(),  # type: ignore[operator]
                "help": f.metadata.get("help", ""),
                "label": f.metadata.get("label") or f.name.replace("_", " "),
                "when": {k: list(v) for k, v in (f.metadata.get("when") or {}).items()},
                "minimum": f.metadata.get("minimum"),
                "basic": f.name in BASIC,
            }
        )
    out.sort(key=lambda x: (not x["basic"], BASIC.index(x["name"]) if x["basic"] else 0))
    return out


class TrainingConfigurator(EngineWidget):
    _esm = esm("training_configurator")
    fields = t.List().tag(sync=True)
    values = t.Dict().tag(sync=True)
    choices = t.Dict().tag(sync=True)  # {model: [...], dataset: [...], hook: [...]}
    check = t.Dict().tag(sync=True)  # problems + estimate
    run = t.Unicode("").tag(sync=True)  # id of the run started last

    def __init__(self, workspace=None, monitor=None, **kwargs: Any):
        self.monitor = monitor
        super().__init__(workspace, **kwargs)
        self.fields = form_fields()
        self.values = to_dict(TrainConfig())
        self._validate()

    def refresh(self) -> None:
        ws = self.workspace
        models = [m.name for m in ws.list("model")] or ["default"]
        datasets = [d.name for d in ws.list("dataset")] + [k.name for k in ws.list("tokenization")]
        hooks: list[str] = []
        model = (
            ws.find(self.values.get("model", "default"), "model")
            if self.values.get("model") != "default"
            else next(iter(ws.list("model")), None)
        )
        if model is not None:
            from ..data.hooks import hook_names_for

            hooks = hook_names_for(
                model.meta["info"]["layers"], model.meta["info"].get("parallel_blocks", False)
            )
        self.choices = {
            "model": ["default", *models],
            "dataset": ["default", *datasets],
            "hook": hooks,
            "hook_out": ["", *hooks],
        }

    @t.observe("values")
    def _on_values(self, change: dict) -> None:
        if (change.get("old") or {}).get("model") != change["new"].get("model"):
            self.refresh()
        self._validate()

    def config(self) -> TrainConfig:
        vals = {
            k: v for k, v in self.values.items() if k in {f.name for f in dataclasses.fields(TrainConfig)}
        }
        for f in self.fields:
            v = vals.get(f["name"])
            if v in ("", None) and f["kind"].startswith("optional"):
                vals[f["name"]] = None
            elif f["kind"] == "list" and isinstance(v, str):
                vals[f["name"]] = _whole_numbers(f["name"], v)
            elif f["kind"] == "grid" and isinstance(v, str):
                vals[f["name"]] = parse_grid(v)
            elif f["kind"].endswith("int") and v not in (None, ""):
                vals[f["name"]] = int(v)
            elif f["kind"].endswith("float") and v not in (None, ""):
                vals[f["name"]] = float(v)
        vals["adam_betas"] = vals.get("adam_betas") or TrainConfig.adam_betas
        return from_dict(TrainConfig, vals)

    def _validate(self) -> None:
        try:
            self.check = check_config(self.workspace, self.config())
        except (ValueError, TypeError) as exc:
            self.check = {"problems": [f"Invalid value: {exc}"]}
        except Exception as exc:  # noqa: BLE001 - shown next to the form
            self.check = {"problems": [str(exc)]}

    # -- actions ---------------------------------------------------------------------------
    def action_set(self, **values: Any) -> None:
        self.values = {**self.values, **values}

    def action_start(self) -> None:
        self.start()

    def start(self, **overrides: Any) -> jobs.Job | None:
        """Start training in the background with the form's settings (plus ``overrides``): a job that
        queues for the accelerator, shown in the monitor, which can pause, resume and stop it."""
        from ..core.errors import MistudioError

        if overrides:
            self.values = {**self.values, **overrides}
        if self.check.get("problems"):
            raise MistudioError(
                "The settings have problems: " + " ".join(self.check["problems"]),
                "fix the fields marked in the form.",
            )
        if self.job is not None and not self.job.done:
            raise MistudioError(
                "A training started here is still running.", "stop it, or wait for it to finish."
            )
        return self.do("train", self.action_train, exclusive=True, cfg=self.config())

    stopped_message = (
        "Stopped: the run is listed as interrupted; Resume in the monitor goes on from its last checkpoint."
    )

    @background
    def action_train(self, cfg: TrainConfig, progress=None, control=None):
        def started(run) -> None:
            on_kernel(lambda: self._started(run.id))

        res = train(self.workspace, cfg, progress=progress, control=control, on_start=started)

        def apply() -> None:
            if res.sae_id:
                m = res.metrics
                self.message = f"Trained {res.sae_id}: EV {m['explained_variance']:.3f}, L0 {m['l0']:.1f}."
            else:
                self.message = self.stopped_message

        return Outcome(apply, res)

    def _started(self, run_id: str) -> None:
        self.run = run_id
        if self.monitor is not None:
            self.monitor.attach(run_id, self.job)
