"""SteeringPane: pick features (search by label or index, or "steer with this" from the FeatureBrowser),
set a strength per feature, and read the unsteered and the steered continuation side by side as they
stream in, with the changed tokens highlighted and the KL, perplexity and activation changes measured;
sweeps over strengths and saved presets."""

from __future__ import annotations

import dataclasses
from typing import Any

import traitlets as t

from .. import features as fx
from .. import steering as st
from ..core.configs import SteerConfig, from_dict, to_dict
from .base import EngineWidget, background, esm, on_kernel

SETTINGS = (
    "method",
    "positions",
    "multiplier",
    "normalise",
    "chat_template",
    "max_tokens",
    "temperature",
    "top_p",
    "frequency_penalty",
    "seed",
)


class SteeringPane(EngineWidget):
    _esm = esm("steering_pane")
    saes = t.List().tag(sync=True)
    sae = t.Unicode("").tag(sync=True)
    chosen = t.List().tag(sync=True)  # [{index, strength, label, max}]
    settings = t.Dict().tag(sync=True)  # the SteerConfig fields of SETTINGS
    prompt = t.Unicode("").tag(sync=True)
    found = t.List().tag(sync=True)  # search results [{index, label, match}]
    unsteered = t.List().tag(sync=True)  # token strings, streamed
    steered = t.List().tag(sync=True)
    result = t.Dict().tag(sync=True)  # diff and metrics of the last generation
    sweep_rows = t.List().tag(sync=True)
    auto = t.Dict().tag(sync=True)  # the last automatic-strength sweep: rows, bound, chosen
    # the fluency rule's defaults and words (steering.FLUENCY_RULE), shown and used by Auto and Generate
    fluency_bound = t.Dict(
        {
            "max_perplexity": st.AUTO_MAX_PERPLEXITY,
            "max_repetition": st.AUTO_MAX_REPETITION,
            "max_invented": st.AUTO_MAX_INVENTED,
            "rule": st.fluency_rule(),
        }
    ).tag(sync=True)
    presets = t.List().tag(sync=True)

    def __init__(self, workspace=None, sae: str | None = None, **kw: Any):
        super().__init__(workspace, **kw)
        self.settings = {k: v for k, v in to_dict(SteerConfig()).items() if k in SETTINGS}
        if sae:
            self.action_select(id=sae)

    # -- notebook API --------------------------------------------------------------------------
    def select(self, sae: str) -> None:
        self.do("select", self.action_select, id=sae)

    def add(self, index: int, strength: float | None = None) -> None:
        self.do("add", self.action_add, index=index, strength=strength)

    def generate(self, prompt: str | None = None, **settings: Any) -> dict[str, Any]:
        """Generate both continuations (blocks; tokens stream into the pane) and return the result."""
        if prompt is not None:
            self.prompt = prompt
        self.settings = {**self.settings, **settings}
        self.do("generate", self.action_generate, blocking=True)
        return self.result

    def find(self, text: str, contrast: str | None = None) -> list[dict[str, Any]]:
        """Features that fire on ``text`` and not on ``contrast`` (default: ``text`` in ordinary case)."""
        self.do("contrast", self.action_contrast, blocking=True, text=text, contrast=contrast or "")
        return self.found

    def auto_strength(self, index: int, **bound: Any) -> dict[str, Any]:
        """Set feature ``index``'s strength to the largest that keeps the text fluent (blocks)."""
        self.do("auto", self.action_auto, blocking=True, index=index, **bound)
        return self.auto

    def config(self) -> SteerConfig:
        return from_dict(
            SteerConfig,
            {
                **self.settings,
                "prompt": self.prompt,
                "features": [[c["index"], c["strength"]] for c in self.chosen],
            },
        )

    # -- state ---------------------------------------------------------------------------------
    def refresh(self) -> None:
        self.saes = [
            {"id": a.id, "name": a.name, "d_sae": a.meta.get("d_sae"), "hook": a.meta.get("hook")}
            for a in self.workspace.list("sae")
        ]
        self.presets = [{"name": p.name, "sae": p.meta.get("sae")} for p in self.workspace.list(st.PRESET)]
        if not self.sae and (first := fx.default_sae(self.workspace)):
            self.sae = first.id  # the one the feature browser opens too

    def _feature_row(self, index: int, strength: float | None) -> dict[str, Any]:
        fx.check_feature_index(self.workspace, self.sae, index)
        ext = fx.latest_extraction(self.workspace, self.sae)
        mx = float(fx.feature_columns(self.workspace, ext)["max"][index]) if ext else None
        label = (fx.shown_labels(self.workspace, self.sae).get(int(index)) or {}).get("label")
        if strength is None:
            strength = round(4 * mx, 3) if mx else 10.0  # a visible push: a few times the feature's peak
        return {"index": int(index), "strength": float(strength), "label": label, "max": mx, "relative": None}

    # -- actions -------------------------------------------------------------------------------
    def action_select(self, id: str) -> None:
        art = self.workspace.get(id, "sae")
        if art.id != self.sae:
            self.sae, self.chosen, self.found, self.result, self.unsteered, self.steered, self.sweep_rows = (
                art.id,
                [],
                [],
                {},
                [],
                [],
                [],
            )

    def action_add(self, index: int, strength: float | None = None) -> None:
        index = int(index)
        rows = [c for c in self.chosen if c["index"] != index]
        self.chosen = rows + [self._feature_row(index, strength)]
        self.found = []

    def action_remove(self, index: int) -> None:
        self.chosen = [c for c in self.chosen if c["index"] != int(index)]

    def action_strength(self, index: int, strength: float) -> None:
        self.chosen = [
            {**c, "strength": float(strength), "relative": None} if c["index"] == int(index) else c
            for c in self.chosen
        ]

    def action_settings(self, **values: Any) -> None:
        cfg = from_dict(SteerConfig, {**self.settings, **values})  # validates the names
        self.settings = {k: v for k, v in to_dict(cfg).items() if k in SETTINGS}

    def action_search(self, query: str) -> None:
        q = str(query).strip()
        if not q:
            self.found = []
            return
        self.found = fx.search(self.workspace, self.sae, q, limit=20)

    @background
    def action_contrast(self, text: str, contrast: str = "", progress=None):
        texts = [x for x in str(text).split("\n") if x.strip()] or [str(text)]
        against = [x for x in str(contrast).split("\n") if x.strip()] or None
        res = fx.contrast(self.workspace, self.sae, texts, against)

        def apply() -> None:
            self.found = [
                {
                    "index": f["index"],
                    "label": f["label"],
                    "match": "contrast",
                    "score": f["score"],
                    "rate": f["rate"],
                    "rate_contrast": f["rate_contrast"],
                    "alignment": f["alignment"],
                    "suggested": f["index"] == res["steer_with"],
                }
                for f in res["features"]
            ]
            self.message = (
                f"{len(self.found)} feature(s) fire more on the text than on the contrast; "
                f"the suggested one (★) writes the difference best."
                if self.found
                else "No feature fires more on the text than on the contrast."
            )

        return apply

    @background
    def action_auto(
        self,
        index: int,
        prompt: str | None = None,
        max_perplexity: float = st.AUTO_MAX_PERPLEXITY,
        max_repetition: float = st.AUTO_MAX_REPETITION,
        progress=None,
        control=None,
    ):
        if prompt is not None:
            on_kernel(lambda: self.set_trait("prompt", prompt))
        cfg = dataclasses.replace(self.config(), prompt=self.prompt if prompt is None else prompt)
        index = int(index)
        if index not in [c["index"] for c in self.chosen]:
            raise st.SteeringError(f"Feature {index} is not among the chosen features.", "add it first.")
        rows: list[dict[str, Any]] = []

        def on_row(row: st.AutoRow) -> None:
            rows.append(row.to_dict())
            snapshot = {"index": index, "rows": list(rows), "running": True}
            on_kernel(lambda: self.set_trait("auto", snapshot))

        res = st.auto_strength(
            self.workspace,
            self.sae,
            cfg,
            feature=index,
            max_perplexity=float(max_perplexity),
            max_repetition=float(max_repetition),
            on_row=on_row,
            control=control,
        )

        def apply() -> None:
            shown = ("rows", "strength", "relative", "bound", "residual_norm", "note", "text", "rule")
            d = res.to_dict()
            self.auto = {
                "index": index,
                **{k: d[k] for k in (*shown, "unsteered", "unsteered_fluency")},
                "running": False,
            }
            if res.strength is not None:
                self.chosen = [
                    {**c, "strength": round(res.strength, 3), "relative": res.relative}
                    if c["index"] == index
                    else c
                    for c in self.chosen
                ]
                self.message = (
                    f"Feature {index}: strength {res.strength:.2f} ({res.relative or 0:.0%} of the residual "
                    "norm), the largest that stays fluent."
                )
            else:
                self.message = res.note or ""

        return apply

    def action_stop(self) -> None:
        if self.job is not None:
            self.job.cancel()

    def action_save_preset(self, name: str) -> None:
        st.save_preset(self.workspace, str(name).strip() or "preset", self.sae, self.config())
        self.message = f"Saved preset {name}."
        self.refresh()

    def action_load_preset(self, name: str) -> None:
        sae, cfg = st.load_preset(self.workspace, name)
        self.action_select(id=sae)
        self.settings = {k: v for k, v in to_dict(cfg).items() if k in SETTINGS}
        self.prompt = cfg.prompt
        self.chosen = [self._feature_row(i, s) for i, s in st.parse_features(cfg.features)]

    @background
    def action_generate(self, prompt: str | None = None, progress=None, control=None):
        if prompt is not None:
            self.prompt = prompt
        cfg = self.config()
        ws, sae = self.workspace, self.sae
        tok_cache: dict[str, list[str]] = {"unsteered": [], "steered": []}
        on_kernel(lambda: self.set_trait("unsteered", []))
        on_kernel(lambda: self.set_trait("steered", []))
        from ..data.models import load_model, resolve_model

        art = ws.get(sae, "sae")
        model_ref = str(
            art.meta.get("model")
            if art.meta.get("model") and ws.find(art.meta["model"], "model")
            else "default"
        )
        tokenizer = load_model(ws, resolve_model(ws, model_ref)).tokenizer

        def stream(which: str, token: int) -> None:
            text = tokenizer.decode([token])
            tok_cache[which].append(text)
            snapshot = list(tok_cache[which])
            on_kernel(lambda: self.set_trait(which, snapshot))

        res = st.steer(ws, sae, cfg, on_token=stream, control=control)

        def apply() -> None:
            self.unsteered, self.steered = res.unsteered_tokens, res.steered_tokens
            d = res.to_dict()
            self.result = {
                k: d[k] for k in ("diff", "metrics", "interrupted", "features", "method", "prompt")
            }
            rel = res.metrics.relative_strength
            self.chosen = [
                {**c, "relative": rel.get(str(c["index"]), c.get("relative"))} for c in self.chosen
            ]
            self.message = "Stopped." if res.interrupted else "Done."

        return apply

    @background
    def action_sweep(self, strengths: list[float], progress=None):
        cfg = self.config()
        rows = st.sweep(
            self.workspace,
            self.sae,
            dataclasses.replace(cfg, features=cfg.features[:1]),
            [float(s) for s in strengths],
        )

        def apply() -> None:
            self.sweep_rows = [r.to_dict() for r in rows]

        return apply
