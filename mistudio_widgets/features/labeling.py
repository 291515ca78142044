"""Automatic feature labels for a whole dictionary: every live feature gets a statistical label
(``label_stats``) in one pass; a language-model explainer (``lm_explainer``: the in-kernel model or an
OpenAI-compatible endpoint) may label some features too. Every label is scored on held-out texts the
explainer never saw (``label_reader``), and all are kept with their method, model and score. Which label
titles a feature is decided in one place, ``store.shown_labels``: a manual label, else the best label
that scores above chance; a label at chance titles nothing."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..core.configs import LabelConfig
from ..core.jobs import JobControl
from ..core.progress import ProgressCallback, emit
from ..core.workspace import Workspace
from . import label_reader, label_stats
from .label_evidence import Evidence, load_evidence
from .label_reader import Score, Texts, auc, auc_se
from .lm_explainer import (  # noqa: F401  (the explainer API, importable from here as before)
    Chat,
    LabelError,
    LocalChat,
    OpenAIChat,
    clean_label,
    explain,
    judge,
    make_chat,
    mark_strong,
    template_id,
)
from .prompt import DENSE_THRESHOLD
from .schema import FEATURES
from .store import FEATURES_FILE, check_feature_index, feature_detail, read_parquet, require_extraction

PROGRESS_EVERY = 256  # features between progress events of the statistical pass


@dataclass
class LabelResult:
    """One label made (or the reason none was)."""

    feature: int
    label: str | None
    method: str  # "statistical" or "auto" (a language-model explainer)
    model: str
    score: Score | None = None
    skipped: str | None = None
    raw: str | None = None

    @property
    def verdict(self) -> str:
        return self.score.verdict if self.score else "unscored"


@dataclass
class LabelRun:
    """What a labelling call did: every result, and the held-out score distribution of each method."""

    results: list[LabelResult] = field(default_factory=list)
    seconds: float = 0.0
    held_out: str = ""

    def of(self, method: str) -> list[LabelResult]:
        return [r for r in self.results if r.method == method and r.label]

    def distribution(self, method: str = label_stats.METHOD) -> dict[str, Any]:
        """Median score, share >= 0.7, share above chance, unscored count, and the rate."""
        rs = self.of(method)
        scores = [r.score.score for r in rs if r.score and r.score.score is not None]
        return {
            "method": method,
            "labelled": len(rs),
            "scored": len(scores),
            "unscored": len(rs) - len(scores),
            "median": statistics.median(scores) if scores else None,
            "share_at_least_0.7": sum(s >= 0.7 for s in scores) / len(scores) if scores else None,
            "share_above_chance": sum(r.verdict == "above chance" for r in rs) / len(rs) if rs else None,
            "chance": label_reader.CHANCE,
            "features_per_second": len(rs) / self.seconds if self.seconds else None,
        }

    def describe(self, method: str = label_stats.METHOD) -> str:
        d = self.distribution(method)
        name = "statistical" if method == label_stats.METHOD else "explainer"
        if not d["scored"]:
            return f"{d['labelled']:,} {name} label(s), none scored"
        return (
            f"{d['labelled']:,} {name} label(s); held-out score (AUC, chance 0.50) median "
            f"{d['median']:.2f}, {d['share_at_least_0.7']:.0%} >= 0.70, {d['share_above_chance']:.0%} above "
            f"chance by two standard errors, {d['unscored']:,} unscored (too few held-out firings)"
        )


def _live(ws: Workspace, ext) -> np.ndarray:

    return read_parquet(ext.path / FEATURES_FILE, columns=FEATURES.cols("frequency")).column(0).to_numpy()


def _logits(ext, feats: list[int]) -> dict[int, tuple[list[str], list[float]]]:

    path = ext.path / FEATURES_FILE
    if "top_logit_tokens" not in read_parquet(path, schema_only=True).names:
        return {}
    t = read_parquet(path, columns=FEATURES.cols("top_logit_tokens", "top_logit_values"))
    toks, vals = t.column(0).to_pylist(), t.column(1).to_pylist()
    return {f: (toks[f][:5], vals[f][:5]) for f in feats}


def choose_features(
    ws: Workspace, ext, features: list[int] | None, top: int | None, all_features: bool
) -> list[int]:
    """The features to label: given ones, every live one, or the ``top`` most frequent that are not
    dense (a dense feature is rarely what "the most frequent" is asked for)."""
    freq = _live(ws, ext)
    if all_features:
        return [int(i) for i in np.nonzero(freq > 0)[0]]
    if features is not None:
        return [check_feature_index(ws, ext.parent, f) for f in features]
    order = [int(i) for i in np.argsort(-freq, kind="stable") if 0 < freq[i] <= DENSE_THRESHOLD]
    return order[: top or 10]


def label_features(
    ws: Workspace,
    sae: str,
    cfg: LabelConfig | None = None,
    *,
    features: list[int] | None = None,
    top: int | None = None,
    all_features: bool = False,
    api_key: str | None = None,
    redo: bool = False,
    progress: ProgressCallback | None = None,
    control: JobControl | None = None,
) -> LabelRun:
    """Label ``features`` (or every live one with ``all_features``, or the ``top`` most frequent): a
    statistical label for each, and with ``cfg.backend`` 'local' or 'openai' a language model's label
    too, every label scored on the same held-out texts. Features already labelled the same way on the
    same held-out texts are skipped (an interrupted batch resumes) unless ``redo``."""
    cfg = cfg or LabelConfig()
    control = control or JobControl()
    t0 = time.perf_counter()
    ext = require_extraction(ws, sae)
    feats = choose_features(ws, ext, features, top, all_features)
    ev = load_evidence(ws, ext, cfg, progress=progress, control=control)
    run = LabelRun(held_out=ev.key)
    chat = make_chat(ws, cfg, api_key) if cfg.backend != label_stats.METHOD else None
    done = _done_before(ws, ev, cfg, chat) if not redo else {}
    texts: dict[int, Texts] = {}

    def held_out(f: int) -> Texts:
        if f not in texts:
            hard = label_stats.fired_keys(ev.explain, f)
            texts[f] = label_reader.held_out_texts(ev.held_out, f, hard, cfg.score_examples, cfg.seed)
        return texts[f]

    todo = [f for f in feats if f not in done.get(label_stats.METHOD, set())]
    _statistical(ws, ev, ext, todo, cfg, held_out, run, progress, control, chat)
    if chat is not None:
        todo = [f for f in feats if f not in done.get("auto", set())]
        _language_model(ws, ev, ext, todo, cfg, chat, held_out, run, progress, control)
    run.seconds = time.perf_counter() - t0
    return run


def _done_before(ws: Workspace, ev: Evidence, cfg: LabelConfig, chat) -> dict[str, set[int]]:
    done: dict[str, set[int]] = {label_stats.METHOD: set(), "auto": set()}
    tid = template_id(cfg) if chat is not None else None
    for r in ws.labels(ev.sae, history=True):
        if (r["meta"].get("scoring") or {}).get("held_out") != ev.key and cfg.score:
            continue
        if r["method"] == label_stats.METHOD and r["template"] == label_stats.VERSION:
            done[label_stats.METHOD].add(r["feature"])
        elif chat is not None and r["method"] == "auto" and r["model"] == chat.name and r["template"] == tid:
            done["auto"].add(r["feature"])
    return done


def _score(label: str, texts: Texts, cfg: LabelConfig, chat) -> Score | None:
    """The reader's score, or with ``cfg.scorer == 'judge'`` the explainer model's, on the same texts."""
    if not cfg.score:
        return None
    base = label_reader.score_label(label, texts)
    enough = min(base.positives, base.negatives) >= label_reader.MIN_TEXTS
    if cfg.scorer != "judge" or chat is None or not enough:
        return base
    pos = judge(chat, label, [texts.text(s) for s in texts.positive], cfg)
    neg = judge(chat, label, [texts.text(s) for s in texts.negative], cfg)
    a = auc(np.array(pos), np.array(neg))
    return Score(
        a,
        auc_se(a, len(pos), len(neg)),
        len(pos),
        len(neg),
        texts.hard,
        texts.fired,
        rule=f"judge ({chat.name}) AUC on held-out texts",
    )


def _row(r: LabelResult, ev: Evidence, extra: dict[str, Any]) -> dict[str, Any]:
    scoring = {**(r.score.as_dict() if r.score else {"score": None}), "held_out": ev.key}
    return {
        "feature": r.feature,
        "label": r.label,
        "method": r.method,
        "model": r.model,
        "template": extra.pop("template", None),
        "score": r.score.score if r.score else None,
        "meta": {"scoring": scoring, "extraction": ev.extraction, **extra},
    }


def _statistical(ws, ev, ext, todo, cfg, held_out, run, progress, control, chat) -> None:
    stats = label_stats.explain_all(ev, todo, _logits(ext, todo))
    emit(progress, "labelling (statistical)", 0, len(todo), unit="feature")
    rows = []
    for n, f in enumerate(todo):
        if n % PROGRESS_EVERY == 0:
            control.check()
            emit(progress, "labelling (statistical)", n, len(todo), unit="feature")
        s = stats.get(f)
        if s is None:
            run.results.append(
                LabelResult(f, None, label_stats.METHOD, label_stats.VERSION, skipped="never fired")
            )
            continue
        r = LabelResult(
            f, s.label, label_stats.METHOD, label_stats.VERSION, _score(s.label, held_out(f), cfg, chat)
        )
        run.results.append(r)
        rows.append(
            _row(
                r,
                ev,
                {"template": label_stats.VERSION, "kind": s.kind, "fires": s.fires, "precision": s.precision},
            )
        )
    ws.add_labels(ev.sae, rows)
    emit(progress, "labelling (statistical)", len(todo), len(todo), unit="feature", finished=True)


def _language_model(ws, ev, ext, todo, cfg, chat, held_out, run, progress, control) -> None:
    tid = template_id(cfg)
    emit(progress, f"labelling ({chat.name})", 0, len(todo), unit="feature")
    for n, f in enumerate(todo):
        control.check()
        detail = feature_detail(ws, ext, f)
        if not detail["examples"]:
            run.results.append(LabelResult(f, None, "auto", chat.name, skipped="never fired"))
            continue
        try:
            label, raw = explain(chat, detail, cfg)
        except LabelError as exc:
            kept = len(run.of("auto"))
            raise LabelError(
                f"{exc.problem} The explainer stopped at feature {n + 1} of {len(todo)}; the statistical "
                f"labels and the {kept} explainer label(s) obtained before are kept.",
                f"{exc.fix} Then run it again: it continues with the rest.",
            ) from exc
        if not label:
            run.results.append(LabelResult(f, None, "auto", chat.name, skipped="empty explanation", raw=raw))
            continue
        r = LabelResult(f, label, "auto", chat.name, _score(label, held_out(f), cfg, chat), raw=raw)
        run.results.append(r)
        extra = {"template": tid, "backend": cfg.backend, "raw": raw[:500], "template_text": cfg.template}
        ws.add_labels(ev.sae, [_row(r, ev, extra)])
        emit(progress, f"labelling ({chat.name})", n + 1, len(todo), unit="feature", message=f"{f}: {label}")
