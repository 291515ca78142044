"""Automatic feature labels: an explainer model reads a feature's top examples (strong tokens marked
<<like this>>) and its logit-lens tokens and names the feature; a scorer model then reads held-out texts
(activating ones from the extraction, non-activating ones found by running the model) and says whether
the label fits; the balanced accuracy is the label's score.

Explainers: the in-kernel model (offline; default the embedded SmolLM2-Instruct) or any OpenAI-compatible
chat-completions endpoint. API keys come from the environment or the caller and are never stored."""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import time
import urllib.error
import urllib.request
from collections import Counter
from typing import Any, Protocol

import numpy as np
import torch

from ..core.configs import LabelConfig
from ..core.errors import MistudioError
from ..core.jobs import JobControl
from ..core.progress import ProgressCallback, emit
from ..core.workspace import Workspace
from ..data.datasets import load_tokens
from ..data.models import load_model, resolve_model
from . import (
    check_feature_index,
    feature_acts,
    feature_detail,
    load_library_sae,
    require_extraction,
    sae_hook,
)


class LabelError(MistudioError):
    pass


class Chat(Protocol):
    name: str

    def chat(self, messages: list[dict[str, str]], max_tokens: int, temperature: float) -> str: ...


class LocalChat:
    """Chat with a workspace model in this process (its chat template, greedy or sampled)."""

    def __init__(self, ws: Workspace, model: str = "default"):
        self.lm = load_model(ws, resolve_model(ws, model))
        self.name = self.lm.name
        if not getattr(self.lm.tokenizer, "chat_template", None):
            raise LabelError(
                f"The model {self.name!r} has no chat template, so it cannot act as an explainer.",
                "use an instruct model (the default SmolLM2-Instruct works) or an OpenAI-compatible "
                "endpoint.",
            )

    @torch.no_grad()
    def chat(self, messages: list[dict[str, str]], max_tokens: int, temperature: float) -> str:
        tok = self.lm.tokenizer
        enc = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
        ids = (enc["input_ids"] if hasattr(enc, "keys") else enc).to(self.lm.device)
        kw: dict[str, Any] = (
            {"do_sample": False} if temperature <= 0 else {"do_sample": True, "temperature": temperature}
        )
        out = self.lm.model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_tokens,
            pad_token_id=tok.pad_token_id or tok.eos_token_id,
            **kw,
        )
        return tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()

    @torch.no_grad()
    def yes_probability(self, messages: list[dict[str, str]]) -> float:
        """P(yes) / (P(yes) + P(no)) for the model's next token after ``messages`` (detection scoring)."""
        tok = self.lm.tokenizer
        enc = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
        ids = (enc["input_ids"] if hasattr(enc, "keys") else enc).to(self.lm.device)
        logp = torch.log_softmax(self.lm.model(input_ids=ids, use_cache=False).logits[0, -1].float(), -1)

        def mass(words: tuple[str, ...]) -> torch.Tensor:
            ids_ = {tok(w, add_special_tokens=False)["input_ids"][0] for w in words}
            return torch.logsumexp(logp[list(ids_)], 0)

        yes, no = mass(("Yes", "yes", " Yes", " yes")), mass(("No", "no", " No", " no"))
        return float(torch.sigmoid(yes - no))


class OpenAIChat:
    """An OpenAI-compatible chat-completions endpoint, with a timeout and retries with backoff."""

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        retries: int = 3,
    ):
        if not base_url.startswith(("http://", "https://")):
            raise LabelError(
                f"The endpoint {base_url!r} is not an http(s) URL.", "give e.g. http://127.0.0.1:11434/v1."
            )
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.name, self._key, self.timeout, self.retries = model, api_key, timeout, retries

    def chat(self, messages: list[dict[str, str]], max_tokens: int, temperature: float) -> str:
        body = json.dumps(
            {"model": self.name, "messages": messages, "max_tokens": max_tokens, "temperature": temperature}
        ).encode()
        headers = {"Content-Type": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(min(0.5 * 2 ** (attempt - 1), 8.0))
            try:
                req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    data = json.loads(resp.read().decode("utf-8"))
                content = data["choices"][0]["message"]["content"]
                return "" if content is None else str(content).strip()  # a null answer is no answer
            except urllib.error.HTTPError as exc:
                if exc.code in (401, 403):
                    raise LabelError(
                        f"The endpoint {self.url} refused the API key (HTTP {exc.code}).",
                        "set the right key in the environment variable named by api_key_env, or in the "
                        "key field.",
                    ) from None
                if exc.code not in (408, 409, 429) and exc.code < 500:
                    raise LabelError(
                        f"The endpoint {self.url} answered HTTP {exc.code}.",
                        "check the base URL and the model name.",
                    ) from None
                last = f"HTTP {exc.code}"
            except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError) as exc:
                reason = getattr(exc, "reason", exc)
                last = (
                    "no answer within the timeout"
                    if isinstance(reason, (socket.timeout, TimeoutError))
                    else str(reason)
                )
            except (KeyError, IndexError, TypeError, ValueError, RecursionError) as exc:
                raise LabelError(
                    f"The endpoint {self.url} did not answer in the chat-completions format ({exc}).",
                    "point base_url at an OpenAI-compatible server.",
                ) from None
        raise LabelError(
            f"The endpoint {self.url} did not answer after {self.retries + 1} tries ({last}).",
            "start the server or fix base_url; for slow models raise the timeout (CLI --timeout), "
            "for a server that may be down lower it or --retries.",
        )


def make_chat(ws: Workspace, cfg: LabelConfig, api_key: str | None = None) -> Chat:
    if cfg.backend == "local":
        return LocalChat(ws, cfg.model)
    if cfg.backend == "openai":
        key = api_key if api_key is not None else os.environ.get(cfg.api_key_env)
        return OpenAIChat(cfg.base_url, cfg.model, key, timeout=cfg.timeout, retries=cfg.retries)
    raise LabelError(f"Unknown labelling backend {cfg.backend!r}.", "use 'local' or 'openai'.")


# ---------------------------------------------------------------------------------------------
def mark_strong(
    tokens: list[str], values: list[float], peak: float, left: str = "<<", right: str = ">>"
) -> str:
    """The text of ``tokens`` on one line, with those at least half of ``peak`` marked ``left``..``right``."""
    out = []
    for t, v in zip(tokens, values):
        out.append(f"{left}{t}{right}" if peak > 0 and v >= 0.5 * peak else t)
    return "".join(out).replace("\n", " ").strip()


def marked_tokens(detail: dict[str, Any], n_examples: int) -> list[str]:
    """The tokens of the top examples where the feature is at least half its peak in that example."""
    out = []
    for e in detail["examples"][:n_examples]:
        out += [t for t, v in zip(e["tokens"], e["values"]) if e["value"] > 0 and v >= 0.5 * e["value"]]
    return out


TOKEN_FACTS = (  # (what, test of one token's text); a fact is stated when it holds for most marked tokens
    ("in CAPITAL LETTERS", lambda t: sum(c.isalpha() for c in t) >= 1 and t.strip().isupper()),
    ("capitalised words", lambda t: t.strip()[:1].isupper() and not t.strip().isupper()),
    ("punctuation", lambda t: bool(t.strip()) and all(not c.isalnum() for c in t.strip())),
    ("digits", lambda t: any(c.isdigit() for c in t)),
    ("line breaks or spaces", lambda t: not t.strip()),
    ("the start of a word", lambda t: t[:1] == " " and t.strip().isalpha()),
    ("inside a word (no leading space)", lambda t: t[:1].isalpha()),
)


def token_facts(tokens: list[str], threshold: float = 0.6) -> list[str]:
    """Plain statements about the marked tokens that hold for at least ``threshold`` of them."""
    if not tokens:
        return []
    facts = []
    for what, test in TOKEN_FACTS:
        share = sum(bool(test(t)) for t in tokens) / len(tokens)
        if share >= threshold:
            facts.append(f"most marked tokens ({share:.0%}) are {what}.")
    return facts


FEW_SHOT = (  # (examples, marked tokens, facts, answer): worked examples for the explainer
    (
        "1. the <<cat>> chased the <<mouse>> into the garden\n2. a <<dog>> barked at the <<horse>>",
        "'cat', 'mouse', 'dog', 'horse'",
        "",
        "animals",
    ),
    (
        '1. she said<<,">> and left\n2. "Wait<<!">> he cried',
        "',\"', '!\"'",
        "Facts: most marked tokens (100%) are punctuation.\n",
        "closing quotation marks",
    ),
    (
        "1. born in <<18>>62 and died\n2. the war of <<19>>14",
        "'18', '19'",
        "Facts: most marked tokens (100%) are digits.\n",
        "the century digits of years",
    ),
)


def _window(e: dict[str, Any], before: int = 8, after: int = 3) -> str:
    a = max(0, e["peak"] - before)
    return mark_strong(
        e["tokens"][a : e["peak"] + after + 1], e["values"][a : e["peak"] + after + 1], e["value"]
    )


def explanation_messages(detail: dict[str, Any], cfg: LabelConfig) -> list[dict[str, str]]:
    """The chat messages asking the explainer to name a feature: optional worked examples, then the
    feature's top examples (short windows, strong tokens marked), its marked tokens, plain facts about
    them and its logit-lens tokens, in ``cfg.template``."""
    ex = detail["examples"][: cfg.examples]
    lines = [f"{i + 1}. {_window(e)}" for i, e in enumerate(ex)]
    logits = (
        ", ".join(repr(x["token"]) for x in (detail.get("logits") or {}).get("positive", [])[:10])
        or "(unknown)"
    )
    marked = marked_tokens(detail, cfg.examples)
    common = [t for t, _ in Counter(marked).most_common(8)]
    facts = token_facts(marked)
    msgs: list[dict[str, str]] = []
    if cfg.few_shot:
        for examples, tokens, fact, answer in FEW_SHOT:
            msgs += [
                {
                    "role": "user",
                    "content": cfg.template.format(
                        examples=examples, tokens=tokens, facts=fact, logits="(unknown)"
                    ),
                },
                {"role": "assistant", "content": answer},
            ]
    msgs.append(
        {
            "role": "user",
            "content": cfg.template.format(
                examples="\n".join(lines),
                logits=logits,
                tokens=", ".join(repr(t) for t in common),
                facts=f"Facts: {' '.join(facts[:2])}\n" if facts else "",
            ),
        }
    )
    return msgs


def explanation_prompt(detail: dict[str, Any], cfg: LabelConfig) -> str:
    """The question about this feature (the last message of :func:`explanation_messages`)."""
    return explanation_messages(detail, cfg)[-1]["content"]


def token_label(detail: dict[str, Any], n_examples: int) -> str:
    """A label read straight off the marked tokens: the commonest ones, and a shared trait if any."""
    marked = marked_tokens(detail, n_examples)
    common = ", ".join(repr(t.strip() or t) for t, _ in Counter(marked).most_common(3))
    facts = [
        what
        for what, test in TOKEN_FACTS[:5]
        if marked and sum(bool(test(t)) for t in marked) >= 0.8 * len(marked)
    ]
    return f"tokens {common}" + (f" ({facts[0]})" if facts else "")


_PREAMBLES = (
    "name:",
    "the feature responds to",
    "this feature responds to",
    "the feature fires on",
    "it responds to",
    "the feature by",
    "answer:",
    "label:",
    "the phrase is",
)


def clean_label(text: str) -> str:
    """The explainer's answer as a label: first non-empty line, first sentence, without quotes and stock
    preambles."""
    line = next((x for x in text.strip().splitlines() if x.strip()), "").strip()
    line = line.split(". ")[0]
    changed = True
    while changed:
        changed = False
        line = line.strip(" \"'`*:")
        for p in _PREAMBLES:
            if line.lower().startswith(p):
                line, changed = line[len(p) :], True
    return line[:120].rstrip(".").strip()


def template_id(cfg: LabelConfig) -> str:
    return hashlib.sha1((cfg.template + ("\0few-shot" if cfg.few_shot else "")).encode()).hexdigest()[:10]


def explain(chat: Chat, detail: dict[str, Any], cfg: LabelConfig) -> tuple[str, str, str]:
    """(label, the explainer's raw answer, where the label came from) for one feature."""
    raw = chat.chat(explanation_messages(detail, cfg), cfg.max_tokens, cfg.temperature)
    label, how = clean_label(raw), "explainer"
    if cfg.few_shot and label.lower() in {shot[3] for shot in FEW_SHOT}:
        label, how = (
            token_label(detail, cfg.examples),
            "marked tokens (the explainer repeated a worked example)",
        )
    elif label and cfg.backend == "local" and not label_cues(label):
        # a small explainer's phrase often names nothing checkable ("the start of a word"): add the evidence
        label, how = f"{label}: {token_label(detail, cfg.examples)}", "explainer, with the marked tokens"
    return label, raw, how


def _non_activating(
    ws: Workspace, ext, index: int, n: int, width: int, rng: np.random.Generator
) -> list[str]:
    """Texts of ``width`` tokens where the feature stays at zero (the model run on random sequences)."""
    art, sae, _ = load_library_sae(ws, ext.parent)
    lm = load_model(ws, ext.meta["model"])
    tokens = load_tokens(ws, ext.meta["tokenization"])
    special = set(lm.tokenizer.all_special_ids)
    found: list[str] = []
    for _ in range(8):
        seqs = rng.choice(len(tokens), size=min(8, len(tokens)), replace=False)
        A = feature_acts(lm, sae, sae_hook(art, sae), torch.tensor(tokens[seqs], dtype=torch.long))[
            ..., index
        ].cpu()
        for row, s in zip(A, seqs):
            for start in rng.permutation(max(tokens.shape[1] - width, 1)):
                ids = tokens[s, start : start + width]
                if float(row[start : start + width].max()) == 0.0 and not special & set(ids.tolist()):
                    found.append(lm.tokenizer.decode(ids))
                    break
            if len(found) >= n:
                return found
    return found


# ---------------------------------------------------------------------------------------------
# Scoring by simulation: read the label for things a program can check in a text (quoted tokens,
# capitals, punctuation marks, digits, line breaks), predict from them how strongly each held-out text
# should activate the feature, and measure how well that separates activating from other texts (AUC).
_WORDS = re.compile(r"[A-Za-z]{2,}")
_PUNCT_NAMES = {
    "comma": ",",
    "period": ".",
    "full stop": ".",
    "quotation": '"',
    "apostrophe": "'",
    "colon": ":",
    "semicolon": ";",
    "exclamation": "!",
    "question mark": "?",
    "hyphen": "-",
    "dash": "-",
}


def _share_caps(text: str) -> float:
    words = _WORDS.findall(text)
    return sum(w.isupper() for w in words) / len(words) if words else 0.0


def label_cues(label: str) -> list[tuple[str, Any]]:
    """What a label says that a program can check: quoted tokens, and traits (capitals, punctuation,
    digits, line breaks) named in words."""
    low, cues = label.lower(), []
    for _, q in re.findall(r"(?<![A-Za-z])([\"'\u201c\u2018])(.+?)(?:\1|[\u201d\u2019]|$)", label):
        if q.strip():
            cues.append(("token", q.strip()))
    if any(w in low for w in ("capital", "upper", "caps")):
        cues.append(("caps", None))
    cues += [("char", ch) for name, ch in _PUNCT_NAMES.items() if name in low]
    if "punctuation" in low:
        cues.append(("punct", None))
    if any(w in low for w in ("digit", "number", "year", "numeral")):
        cues.append(("digit", None))
    if any(w in low for w in ("line break", "newline", "new line")) or "'\\n'" in label:
        cues.append(("char", "\n"))
    return cues


def simulate(cues: list[tuple[str, Any]], text: str) -> float:
    """How strongly ``text`` shows what the cues describe (0: not at all)."""
    best = 0.0
    for kind, v in cues:
        if kind == "token":
            s = len(re.findall(r"(?<![A-Za-z])" + re.escape(v), text, flags=re.I)) / max(len(text.split()), 1)
        elif kind == "char":
            s = text.count(v) / max(len(text), 1)
        elif kind == "punct":
            s = sum(not c.isalnum() and not c.isspace() for c in text) / max(len(text), 1)
        elif kind == "digit":
            s = sum(c.isdigit() for c in text) / max(len(text), 1)
        else:
            s = _share_caps(text)
        best = max(best, s)
    return best


def auc(pos: list[float], neg: list[float]) -> float:
    """The chance that a random activating text scores above a random other one (ties half); 0.5 is chance."""
    return float(np.mean([(a > b) + 0.5 * (a == b) for a in pos for b in neg]))


def simulation_score(label: str, pos: list[str], neg: list[str]) -> dict[str, Any]:
    cues = label_cues(label)
    if not cues:
        return {
            "score": None,
            "chance": 0.5,
            "rule": "simulation",
            "reason": "the label names no token or trait (capitals, punctuation, digits) the simulator "
            "can check",
        }
    return {
        "score": auc([simulate(cues, t) for t in pos], [simulate(cues, t) for t in neg]),
        "chance": 0.5,
        "rule": "simulation (AUC)",
        "cues": [f"{k}:{v}" if v is not None else k for k, v in cues],
        "positives": len(pos),
        "negatives": len(neg),
    }


def held_out_texts(
    ws: Workspace, ext, detail: dict[str, Any], cfg: LabelConfig, rng: np.random.Generator
) -> tuple[list[str], list[str]]:
    """Held-out activating texts (examples the explainer did not see) and as many non-activating ones."""
    held = detail["examples"][cfg.examples :] + [
        e for g in detail["quantile_examples"] for e in g["examples"]
    ]
    seen, pos = set(), []
    for e in held:
        text = "".join(e["tokens"]).strip()
        if text and text not in seen:
            seen.add(text)
            pos.append(text)
    pos = pos[: cfg.score_examples]
    width = len(detail["examples"][0]["tokens"]) if detail["examples"] else 24
    neg = _non_activating(ws, ext, detail["index"], len(pos), width, rng) if pos else []
    return pos, neg


def judge(chat: Chat, label: str, pos: list[str], neg: list[str], cfg: LabelConfig) -> dict[str, Any]:
    """Balanced accuracy of the scorer telling the activating texts ``pos`` from ``neg`` given ``label``."""

    def ask(text: str) -> list[dict[str, str]]:
        return [
            {"role": "user", "content": cfg.detect_template.format(label=label, text=text.replace("\n", " "))}
        ]

    if hasattr(chat, "yes_probability"):
        # an in-kernel scorer: rank the texts by P(yes) and call the upper half "active" (a small model's
        # plain answers are nearly always the same word; its probabilities still carry the signal)
        p_pos = [chat.yes_probability(ask(t)) for t in pos]
        p_neg = [chat.yes_probability(ask(t)) for t in neg]
        cut = float(np.median(p_pos + p_neg))
        tp, tn = sum(p > cut for p in p_pos), sum(p <= cut for p in p_neg)
        how = "P(yes) above the median"
    else:

        def says_yes(text: str) -> bool:
            return chat.chat(ask(text), max_tokens=3, temperature=0.0).strip().lower().startswith("yes")

        tp, tn = sum(says_yes(t) for t in pos), sum(not says_yes(t) for t in neg)
        how = "answered yes/no"
    return {
        "score": 0.5 * (tp / len(pos) + tn / len(neg)),
        "chance": 0.5,
        "true_positive": tp,
        "positives": len(pos),
        "true_negative": tn,
        "negatives": len(neg),
        "rule": how,
    }


def scorer_for(cfg: LabelConfig) -> str:
    """'simulation' or 'judge': ``auto`` simulates for the in-kernel model, which cannot judge labels
    (see ``benchmarks/bench_insight.py``), and asks an endpoint's model to judge."""
    return cfg.scorer if cfg.scorer != "auto" else ("simulation" if cfg.backend == "local" else "judge")


def detection_score(
    ws: Workspace,
    chat: Chat,
    ext,
    detail: dict[str, Any],
    label: str,
    cfg: LabelConfig,
    rng: np.random.Generator,
) -> dict[str, Any]:
    """How well the label tells held-out activating texts from non-activating ones (chance: 0.5), by
    simulation or by a judge model (``cfg.scorer``)."""
    pos, neg = held_out_texts(ws, ext, detail, cfg, rng)
    if not pos or not neg:
        return {"score": None, "chance": 0.5, "reason": "not enough held-out texts"}
    if scorer_for(cfg) == "simulation":
        return simulation_score(label, pos, neg)
    return judge(chat, label, pos, neg, cfg)


def label_features(
    ws: Workspace,
    sae: str,
    cfg: LabelConfig | None = None,
    *,
    features: list[int] | None = None,
    top: int | None = None,
    api_key: str | None = None,
    redo: bool = False,
    progress: ProgressCallback | None = None,
    control: JobControl | None = None,
) -> list[dict[str, Any]]:
    """Label ``features`` (or the ``top`` most frequent) of an SAE automatically. Features already
    labelled by the same explainer model and prompt template are skipped (so an interrupted batch
    resumes where it stopped) unless ``redo``. Each label is stored at once, with its method, model,
    template, score and time."""
    cfg = cfg or LabelConfig()
    control = control or JobControl()
    ext = require_extraction(ws, sae)
    sae_id = ext.parent
    if features is None:
        import pyarrow.parquet as pq

        freq = pq.read_table(ext.path / "features.parquet", columns=["frequency"]).column(0).to_numpy()
        order = [int(i) for i in np.argsort(-freq, kind="stable") if freq[i] > 0]
        features = order[: top or 10]
    features = [check_feature_index(ws, sae_id, f) for f in features]
    chat = make_chat(ws, cfg, api_key)
    tid = template_id(cfg)
    done_before = {
        r["feature"]
        for r in ws.labels(sae_id, history=True)
        if r["method"] == "auto" and r["model"] == chat.name and r["template"] == tid
    }
    todo = [f for f in features if redo or f not in done_before]
    rng = np.random.default_rng(cfg.seed)
    results = []
    emit(progress, "labelling", 0, len(todo), unit="feature")
    try:
        _label_each(ws, ext, sae_id, todo, chat, cfg, tid, rng, results, progress, control)
    except LabelError as exc:
        kept = sum(1 for r in results if r.get("label"))
        raise LabelError(
            f"{exc.problem} Labelling stopped at feature {len(results) + 1} of {len(todo)}; the {kept} "
            "label(s) "
            "obtained before are kept.",
            f"{exc.fix} Then run it again: it continues with the rest.",
        ) from exc
    emit(progress, "labelling", len(todo), len(todo), unit="feature", finished=True)
    return results


def _label_each(ws, ext, sae_id, todo, chat, cfg, tid, rng, results, progress, control) -> None:
    for n, f in enumerate(todo):
        control.check()
        detail = feature_detail(ws, ext, f)
        if not detail["examples"]:
            results.append({"feature": f, "label": None, "skipped": "never fired"})
            continue
        label, raw, how = explain(chat, detail, cfg)
        if not label:
            results.append({"feature": f, "label": None, "skipped": "empty explanation", "raw": raw})
            continue
        scored = detection_score(ws, chat, ext, detail, label, cfg, rng) if cfg.score else {"score": None}
        ws.add_label(
            sae_id,
            f,
            label,
            method="auto",
            model=chat.name,
            template=tid,
            score=scored["score"],
            meta={
                "backend": cfg.backend,
                "raw": raw[:500],
                "scoring": scored,
                "extraction": ext.id,
                "from": how,
                "template_text": cfg.template,
            },
        )
        results.append(
            {"feature": f, "label": label, "score": scored["score"], "scoring": scored, "from": how}
        )
        emit(progress, "labelling", n + 1, len(todo), unit="feature", message=f"{f}: {label}")
