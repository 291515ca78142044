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
from ..configs import SteerConfig, from_dict, to_dict
from ..jobs import JobControl
from .base import EngineWidget, background, esm, on_kernel

SETTINGS = ("method", "multiplier", "normalise", "chat_template", "max_tokens", "temperature", "top_p",
            "frequency_penalty", "seed")


class SteeringPane(EngineWidget):
    _esm = esm("steering_pane")
    saes = t.List().tag(sync=True)
    sae = t.Unicode("").tag(sync=True)
    chosen = t.List().tag(sync=True)          # [{index, strength, label, max}]
    settings = t.Dict().tag(sync=True)        # the SteerConfig fields of SETTINGS
    prompt = t.Unicode("").tag(sync=True)
    found = t.List().tag(sync=True)           # search results [{index, label, match}]
    unsteered = t.List().tag(sync=True)       # token strings, streamed
    steered = t.List().tag(sync=True)
    result = t.Dict().tag(sync=True)          # diff and metrics of the last generation
    sweep_rows = t.List().tag(sync=True)
    presets = t.List().tag(sync=True)

    def __init__(self, workspace=None, sae: str | None = None, **kw: Any):
        self._control: JobControl | None = None
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

    def config(self) -> SteerConfig:
        return from_dict(SteerConfig, {**self.settings, "prompt": self.prompt,
                                       "features": [[c["index"], c["strength"]] for c in self.chosen]})

    # -- state ---------------------------------------------------------------------------------
    def refresh(self) -> None:
        self.saes = [{"id": a.id, "name": a.name, "d_sae": a.meta.get("d_sae"), "hook": a.meta.get("hook")}
                     for a in self.workspace.list("sae")]
        self.presets = [{"name": p.name, "sae": p.meta.get("sae")} for p in self.workspace.list(st.PRESET)]
        if not self.sae and self.saes:
            self.sae = self.saes[-1]["id"]

    def _feature_row(self, index: int, strength: float | None) -> dict[str, Any]:
        fx.check_feature_index(self.workspace, self.sae, index)
        ext = fx.latest_extraction(self.workspace, self.sae)
        mx = float(fx.feature_columns(self.workspace, ext)["max"][index]) if ext else None
        label = next((r["label"] for r in self.workspace.labels(self.sae, index)), None)
        if strength is None:
            strength = round(4 * mx, 3) if mx else 10.0      # a visible push: a few times the feature's peak
        return {"index": int(index), "strength": float(strength), "label": label, "max": mx}

    # -- actions -------------------------------------------------------------------------------
    def action_select(self, id: str) -> None:
        art = self.workspace.get(id, "sae")
        if art.id != self.sae:
            self.sae, self.chosen, self.found, self.result, self.unsteered, self.steered, self.sweep_rows = (
                art.id, [], [], {}, [], [], [])

    def action_add(self, index: int, strength: float | None = None) -> None:
        index = int(index)
        rows = [c for c in self.chosen if c["index"] != index]
        self.chosen = rows + [self._feature_row(index, strength)]

    def action_remove(self, index: int) -> None:
        self.chosen = [c for c in self.chosen if c["index"] != int(index)]

    def action_strength(self, index: int, strength: float) -> None:
        self.chosen = [{**c, "strength": float(strength)} if c["index"] == int(index) else c for c in self.chosen]

    def action_settings(self, **values: Any) -> None:
        cfg = from_dict(SteerConfig, {**self.settings, **values})          # validates the names
        self.settings = {k: v for k, v in to_dict(cfg).items() if k in SETTINGS}

    def action_search(self, query: str) -> None:
        q = str(query).strip()
        if not q:
            self.found = []
            return
        self.found = fx.search(self.workspace, self.sae, q, limit=20)

    def action_stop(self) -> None:
        if self._control is not None:
            self._control.cancel()

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
    def action_generate(self, prompt: str | None = None, progress=None):
        if prompt is not None:
            self.prompt = prompt
        cfg = self.config()
        ws, sae = self.workspace, self.sae
        self._control = control = JobControl()
        tok_cache: dict[str, list[str]] = {"unsteered": [], "steered": []}
        on_kernel(lambda: self.set_trait("unsteered", []))
        on_kernel(lambda: self.set_trait("steered", []))
        from ..models import load_model, resolve_model

        art = ws.get(sae, "sae")
        model_ref = art.meta.get("model") if art.meta.get("model") and ws.find(art.meta["model"], "model") else "default"
        tokenizer = load_model(ws, resolve_model(ws, model_ref)).tokenizer

        def stream(which: str, token: int) -> None:
            text = tokenizer.decode([token])
            tok_cache[which].append(text)
            snapshot = list(tok_cache[which])
            on_kernel(lambda: self.set_trait(which, snapshot))

        res = st.steer(ws, sae, cfg, on_token=stream, control=control)

        def apply() -> None:
            self.unsteered, self.steered = res["unsteered_tokens"], res["steered_tokens"]
            self.result = {"diff": res["diff"], "metrics": res["metrics"], "interrupted": res["interrupted"],
                           "features": res["features"], "method": res["method"]}
            self.message = "Stopped." if res["interrupted"] else "Done."
        return apply

    @background
    def action_sweep(self, strengths: list[float], progress=None):
        cfg = self.config()
        rows = st.sweep(self.workspace, self.sae, dataclasses.replace(cfg, features=cfg.features[:1]),
                        [float(s) for s in strengths])

        def apply() -> None:
            self.sweep_rows = rows
        return apply
