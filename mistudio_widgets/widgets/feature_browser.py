"""FeatureBrowser: every feature of an SAE in a virtualised list (filter and sort in the page), a feature's
detail (highlighted examples, histogram, logit lens, neighbours, co-activation heatmap, labels), and the
prompt tester. FeatureMap: the decoder directions in 2-D, click a point to open the feature.

The per-feature columns reach the page as one binary buffer of float32 arrays, not one message per
feature; details are read from the extraction's Parquet files when a feature is opened."""

from __future__ import annotations

from typing import Any

import numpy as np
import traitlets as t

from .. import features as fx
from ..core.configs import ExtractConfig, LabelConfig, from_dict, to_dict
from .base import EngineWidget, background, esm

COLUMNS = (
    "frequency",
    "mean",
    "max",
    "impact",
)  # packed in this order into ``columns`` (impact: NaN unmeasured)


class FeatureBrowser(EngineWidget):
    _esm = esm("feature_browser")
    saes = t.List().tag(sync=True)  # [{id, name, d_sae, extraction}]
    sae = t.Unicode("").tag(sync=True)  # the SAE shown
    extraction = t.Dict().tag(sync=True)  # its newest finished extraction (id, summary) or {}
    n_features = t.Int(0).tag(sync=True)
    columns = t.Bytes(b"").tag(sync=True)  # float32 [len(COLUMNS), n_features], little-endian
    labels = t.Dict().tag(sync=True)  # {"index": label}: the labels that title features (store.shown_labels)
    label_note = t.Unicode("").tag(sync=True)  # how many labels title features, and their held-out scores
    detail = t.Dict().tag(sync=True)  # the open feature
    prompt = t.Dict().tag(sync=True)  # the prompt tester's last answer
    coact = t.Dict().tag(sync=True)  # co-activation of a chosen set
    trial = t.Dict().tag(sync=True)  # the open feature on a text typed on its page (features.try_feature)
    attribution = t.Dict().tag(sync=True)  # "why this next token": features.attribute's last answer
    clusters = t.Dict().tag(sync=True)  # the open feature's contexts in groups (features.context_clusters)
    saliency = t.Dict().tag(sync=True)  # which tokens of the test text make it fire (features.token_saliency)
    example_why = t.Dict().tag(sync=True)  # top examples' saliency and attention (features.example_saliency)
    steer_request = t.Dict().tag(sync=True)  # {sae, index}: "steer with this" (the Studio follows it)
    label_settings = t.Dict().tag(sync=True)  # LabelConfig fields (never an API key)

    def __init__(self, workspace=None, sae: str | None = None, **kw: Any):
        self._initial = sae
        super().__init__(workspace, **kw)
        self.label_settings = to_dict(LabelConfig())
        if sae:
            self.select(sae)

    # -- notebook API ------------------------------------------------------------------------
    def select(self, sae: str) -> None:
        self.do("select", self.action_select, id=sae)

    def show(self, index: int) -> dict[str, Any]:
        """Open feature ``index`` (as a click in the list does) and return its detail."""
        self.do("open", self.action_open, index=index)
        return self.detail

    def attribute(self, prompt: str, target: str | None = None, top: int = 10) -> dict[str, Any]:
        """Which features push the next token of ``prompt`` (or ``target``) up or down, checked by
        ablation (blocks until the table is shown)."""
        self.do(
            "attribute", self.action_attribute, blocking=True, prompt=prompt, target=target or "", top=top
        )
        return self.attribution

    def test_prompt(
        self,
        text: str,
        contrast: str | None = None,
        *,
        ordinary: bool = False,
        dense: float = fx.DENSE_THRESHOLD,
    ) -> dict[str, Any]:
        """The prompt tester, from a cell (blocks until the answer is shown). With ``contrast`` (or
        ``ordinary``: the same text in its ordinary case) it ranks the features that fire on ``text`` and
        not on the contrast."""
        self.do(
            "fire",
            self.action_fire,
            blocking=True,
            text=text,
            contrast=contrast or "",
            ordinary=ordinary,
            dense=dense,
        )
        return self.prompt

    def extract(self, tokens: int = ExtractConfig.tokens, **settings: Any) -> None:
        """Run an extraction for the selected SAE (blocks; progress shows in the widget)."""
        self.do("extract", self.action_extract, blocking=True, tokens=tokens, **settings)

    def label(self, index: int, text: str) -> None:
        self.do("label", self.action_label, index=index, label=text)

    def autolabel(
        self,
        features: list[int] | None = None,
        top: int | None = None,
        api_key: str | None = None,
        redo: bool = False,
        all: bool = False,
        **settings: Any,
    ) -> None:
        """Label features automatically (blocks; progress shows in the widget). ``settings`` are
        LabelConfig fields; the API key, if any, is used for this call only. Features this explainer
        and template labelled before are skipped unless ``redo``."""
        self.label_settings = {**self.label_settings, **settings}
        self.do(
            "autolabel",
            self.action_autolabel,
            blocking=True,
            features=features,
            top=top,
            all=all,
            api_key=api_key,
            redo=redo,
        )

    # -- state from the workspace ---------------------------------------------------------------
    def refresh(self) -> None:
        rows = []
        for a in self.workspace.list("sae"):
            ext = fx.latest_extraction(self.workspace, a)
            rows.append(
                {
                    "id": a.id,
                    "name": a.name,
                    "d_sae": a.meta.get("d_sae"),
                    "hook": a.meta.get("hook"),
                    "extraction": ext.id if ext else None,
                }
            )
        self.saes = rows
        if self.sae and self.workspace.find(self.sae, "sae") is None:
            self.sae, self.extraction, self.columns, self.n_features, self.detail = "", {}, b"", 0, {}
        elif not self.sae and rows and not self._initial and (first := fx.default_sae(self.workspace)):
            self._load(first.id)
        elif self.sae and self.extraction.get("id") != next(
            (r["extraction"] for r in rows if r["id"] == self.sae), None
        ):
            self._load(self.sae)

    def _load(self, sae_id: str) -> None:
        art = self.workspace.get(sae_id, "sae")
        self.sae = art.id
        ext = fx.latest_extraction(self.workspace, art)
        self.labels = _shown(self.workspace, art.id)
        self.detail, self.prompt, self.coact = {}, {}, {}
        if ext is None:
            self.extraction, self.columns, self.n_features = {}, b"", int(art.meta.get("d_sae") or 0)
            return
        cols = dict(fx.feature_columns(self.workspace, ext))
        impact = fx.read_impact(ext)
        cols["impact"] = impact.estimate if impact is not None else np.full(len(cols["frequency"]), np.nan)
        self.n_features = int(len(cols["frequency"]))
        self.columns = np.stack([cols[c].astype("<f4") for c in COLUMNS]).tobytes()
        self.extraction = {
            "id": ext.id,
            "name": ext.name,
            **(ext.meta.get("summary") or {}),
            "config": ext.meta.get("config", {}),
            "impact": impact.summary() if impact is not None else None,
        }

    # -- actions from the page ------------------------------------------------------------------
    def action_select(self, id: str) -> None:
        self._load(id)

    def action_open(self, index: int) -> None:
        if not self.extraction:
            raise fx.FeatureError("This SAE has no feature extraction yet.", "press Extract first.")
        self.detail = fx.feature_detail(self.workspace, self.extraction["id"], int(index))
        self.coact = {}

    def action_coact(self, features: list[int]) -> None:
        self.coact = fx.coactivation(self.workspace, self.extraction["id"], features)

    @t.observe("labels")
    def _label_note(self, _change=None) -> None:
        self.label_note = fx.label_summary(self.workspace, self.sae) if self.sae else ""

    def action_label(self, index: int, label: str) -> None:
        label = str(label).strip()
        fx.set_label(self.workspace, self.sae, int(index), label)
        self.labels = {**self.labels, str(int(index)): label}
        if self.detail.get("index") == int(index):
            self.detail = fx.feature_detail(self.workspace, self.extraction["id"], int(index))
        self.message = f"Feature {index} labelled."

    def action_steer(self, index: int) -> None:
        self.steer_request = {"sae": self.sae, "index": int(index)}

    @background
    def action_attribute(self, prompt: str, target: str = "", top: int = 10, progress=None):
        res = fx.attribute(self.workspace, self.sae, str(prompt), str(target) or None, top=int(top))

        def apply() -> None:
            self.attribution = res.to_dict()

        return apply

    @background
    def action_clusters(self, index: int, progress=None):
        """The open feature's stored contexts grouped by the model's hidden states."""
        ext = self.extraction.get("id")
        if not ext:
            raise fx.FeatureError("This SAE has no finished extraction.", "extract its features first.")
        res = fx.context_clusters(self.workspace, ext, int(index))

        def apply() -> None:
            self.clusters = res

        return apply

    @background
    def action_saliency(self, index: int, text: str, progress=None):
        """Integrated gradients of the open feature on the test text, token by token."""
        res = fx.token_saliency(self.workspace, self.sae, int(index), str(text))

        def apply() -> None:
            self.saliency = res

        return apply

    @background
    def action_example_why(self, index: int, progress=None):
        """Saliency and attention for the open feature's top examples (their second and third colouring)."""
        ext = self.extraction.get("id")
        if not ext:
            raise fx.FeatureError("This SAE has no finished extraction.", "extract its features first.")
        res = fx.example_saliency(self.workspace, ext, int(index), progress=progress)

        def apply() -> None:
            self.example_why = res

        return apply

    @background
    def action_try(self, index: int, text: str, progress=None):
        """The open feature's activation at each token of ``text`` (the feature page's test box)."""
        res = fx.try_feature(self.workspace, self.sae, int(index), str(text))

        def apply() -> None:
            self.trial = res

        return apply

    @background
    def action_fire(
        self,
        text: str,
        contrast: str = "",
        ordinary: bool = False,
        dense: float = fx.DENSE_THRESHOLD,
        progress=None,
    ):
        ws, sae = self.workspace, self.sae
        if not sae:
            raise fx.FeatureError("No SAE is selected.", "choose an SAE first.")
        dense = float(dense)
        if contrast.strip() or ordinary:
            texts = [x for x in text.split("\n") if x.strip()] or [text]
            against = [x for x in contrast.split("\n") if x.strip()] or None
            res = fx.contrast(ws, sae, texts, against, dense_threshold=dense)
            res = {
                **res,
                "mode": "contrast",
                "text": text,
                **{
                    side: [
                        {**row, "values": {str(k): v for k, v in row["values"].items()}} for row in res[side]
                    ]
                    for side in ("texts", "contrast")
                },
            }
        else:
            res = fx.fire(ws, sae, text, dense_threshold=dense)
            res = {
                **res,
                "mode": "fire",
                "text": text,
                "values": {str(k): v for k, v in res["values"].items()},
            }

        def apply() -> None:
            self.prompt = res

        return apply

    @background
    def action_autolabel(
        self,
        features: list[int] | None = None,
        top: int | None = None,
        api_key: str | None = None,
        settings: dict[str, Any] | None = None,
        redo: bool = False,
        all: bool = False,
        progress=None,
    ):
        from ..features.labeling import label_features

        if settings:
            self.label_settings = {
                **self.label_settings,
                **{k: v for k, v in settings.items() if k in self.label_settings},
            }
        cfg = from_dict(LabelConfig, self.label_settings)
        ws, sae = self.workspace, self.sae
        if not self.extraction:
            raise fx.FeatureError("This SAE has no feature extraction yet.", "press Extract first.")
        res = label_features(
            ws,
            sae,
            cfg,
            features=[int(f) for f in features] if features else None,
            top=int(top) if top else None,
            all_features=bool(all),
            api_key=api_key or None,
            redo=bool(redo),
            progress=progress,
        )

        def apply() -> None:
            self.labels = _shown(ws, sae)
            self._label_note()
            if self.detail:
                self.detail = fx.feature_detail(ws, self.extraction["id"], self.detail["index"])
            methods = sorted({r.method for r in res.results if r.label})
            skipped = sorted({f"feature {r.feature}: {r.skipped}" for r in res.results if r.skipped})
            self.message = (
                " ".join(res.describe(m) + "." for m in methods)
                if methods
                else f"No label made ({'; '.join(skipped[:3])})."
                if skipped
                else "Nothing to do: these features already have labels from this explainer on these "
                "held-out texts; tick “label again if already labelled” to redo them."
            )

        return apply

    @background
    def action_extract(
        self, tokens: int = ExtractConfig.tokens, progress=None, control=None, **settings: Any
    ):
        ws, sae = self.workspace, self.sae
        if not sae:
            raise fx.FeatureError("No SAE is selected.", "choose an SAE first.")
        ext = fx.extract(
            ws, sae, ExtractConfig(tokens=int(tokens), **settings), progress=progress, control=control
        )

        def apply() -> None:
            self._load(sae)
            self.message = f"Extracted {ext.meta['summary']['tokens']:,} tokens."

        return apply

    @background
    def action_impact(self, tokens: int = 32768, progress=None, control=None):
        """Every feature's loss change when zeroed where it fires (features.ablation_impact), then the
        list can sort by it."""
        sae = self.sae
        if not sae:
            raise fx.FeatureError("No SAE is selected.", "choose an SAE first.")
        res = fx.ablation_impact(self.workspace, sae, tokens=int(tokens), progress=progress, control=control)

        def apply() -> None:
            self._load(sae)
            r = f"; r = {res.correlation:.2f} against exact ablation" if res.correlation is not None else ""
            self.message = f"Measured every feature's impact over {res.tokens:,} held-out tokens{r}."

        return apply


def _shown(ws, sae: str) -> dict[str, str]:
    return {str(f): r["label"] for f, r in fx.shown_labels(ws, sae).items()}
