"""The language-model explainers: the in-kernel model (offline; default the embedded SmolLM2-Instruct) or
any OpenAI-compatible chat-completions endpoint reads a feature's top examples (strong tokens marked
<<like this>>) and its logit-lens tokens and names the feature. Their labels are scored on the same
held-out texts as the statistical explainer's (``label_reader``) and title a feature only when they score
higher. A judge (``judge``) can score instead of the reader when asked. API keys come from the
environment or the caller and are never stored."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import socket
import threading
import time
import urllib.parse
from collections import Counter
from typing import Any, Protocol

import torch

from ..core.configs import LabelConfig
from ..core.errors import MistudioError
from ..core.workspace import Workspace
from ..data.models import load_model, resolve_model


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
                status, raw = post_within(self.url, body, headers, self.timeout)
            except AnswerTooLarge:
                raise LabelError(
                    f"The endpoint {self.url} sent more than {MAX_ANSWER_BYTES:,} bytes for one answer; "
                    "it was cut off.",
                    "point base_url at an OpenAI-compatible server (answers are a few hundred bytes).",
                ) from None
            except (OSError, http.client.HTTPException) as exc:
                last = (
                    "no answer within the timeout"
                    if isinstance(exc, (socket.timeout, TimeoutError))
                    else str(exc) or type(exc).__name__
                )
                continue
            if status in (401, 403):
                raise LabelError(
                    f"The endpoint {self.url} refused the API key (HTTP {status}).",
                    "set the right key in the environment variable named by api_key_env, or in the "
                    "key field.",
                )
            if status in (408, 409, 429) or status >= 500:
                last = f"HTTP {status}"
                continue
            if status >= 300:
                raise LabelError(
                    f"The endpoint {self.url} answered HTTP {status}.",
                    "check the base URL and the model name.",
                )
            try:
                content = json.loads(raw.decode("utf-8"))["choices"][0]["message"]["content"]
                return "" if content is None else str(content).strip()  # a null answer is no answer
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


MAX_ANSWER_BYTES = 1 << 20  # an endpoint's answer is cut off beyond this


class AnswerTooLarge(Exception):
    pass


def post_within(url: str, body: bytes, headers: dict[str, str], seconds: float) -> tuple[int, bytes]:
    """POST ``body`` and read the answer (status, bytes) within ``seconds`` in all: connecting, sending
    and every byte of the answer (a server trickling a byte at a time is cut off at the deadline, and an
    answer over ``MAX_ANSWER_BYTES`` is refused)."""
    u = urllib.parse.urlsplit(url)
    cls = http.client.HTTPSConnection if u.scheme == "https" else http.client.HTTPConnection
    conn = cls(u.hostname or "", u.port, timeout=seconds)
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            conn.request("POST", u.path + (f"?{u.query}" if u.query else ""), body, headers)
            resp = conn.getresponse()
            parts, n = [], 0
            while chunk := resp.read1(65536):
                n += len(chunk)
                if n > MAX_ANSWER_BYTES:
                    raise AnswerTooLarge()
                parts.append(chunk)
            box["answer"] = (resp.status, b"".join(parts))
        except BaseException as exc:  # handed to the caller's thread
            box["error"] = exc

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        with contextlib.suppress(OSError, AttributeError):
            conn.sock.shutdown(socket.SHUT_RDWR)
        conn.close()
        worker.join(5)
        raise TimeoutError("no answer within the timeout")
    conn.close()
    if "error" in box:
        raise box["error"]
    return box["answer"]


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


def explain(chat: Chat, detail: dict[str, Any], cfg: LabelConfig) -> tuple[str, str]:
    """(label, the explainer's raw answer) for one feature; the label is empty when the explainer only
    repeated a worked example."""
    raw = chat.chat(explanation_messages(detail, cfg), cfg.max_tokens, cfg.temperature)
    label = clean_label(raw)
    if cfg.few_shot and label.lower() in {shot[3] for shot in FEW_SHOT}:
        label = ""
    return label, raw


def judge(chat: Chat, label: str, texts: list[str], cfg: LabelConfig) -> list[float]:
    """A judge model's prediction for each text given ``label``: P(yes) for the in-kernel model (a small
    model's plain answers are nearly always the same word; its probabilities still carry the signal),
    1 or 0 for an endpoint's yes or no. Scored like the reader's predictions (AUC)."""

    def ask(text: str) -> list[dict[str, str]]:
        return [
            {"role": "user", "content": cfg.detect_template.format(label=label, text=text.replace("\n", " "))}
        ]

    if hasattr(chat, "yes_probability"):
        return [chat.yes_probability(ask(t)) for t in texts]
    answers = [chat.chat(ask(t), max_tokens=3, temperature=0.0) for t in texts]
    return [1.0 if a.strip().lower().startswith("yes") else 0.0 for a in answers]
