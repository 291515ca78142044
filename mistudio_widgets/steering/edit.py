"""Steering edits: the function that changes the hook's activations by feature directions (by
method, see the package's docstring), prompts as token ids, and seeded generation under an edit."""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

from ..core.configs import SteerConfig
from ..core.errors import MistudioError
from ..core.jobs import JobControl
from ..core.workspace import Workspace
from ..data.hooks import capture, intervene
from ..data.models import LoadedModel
from ..features import check_feature_index
from ..sae import SAE
from .results import Forward

MAX_STRENGTH = 1e4


class SteeringError(MistudioError):
    pass


def parse_features(spec) -> list[tuple[int, float]]:
    """[(index, strength)] from [[i, s], ...], {i: s}, or 'I:S' strings (strength 1 when left out)."""
    items = spec.items() if isinstance(spec, dict) else spec
    out = []
    for it in items:
        if isinstance(it, str):
            idx, _, st = it.partition(":")
            try:
                it = (int(idx), float(st) if st else 1.0)
            except ValueError:
                raise SteeringError(
                    f"{it!r} is not a feature: write INDEX or INDEX:STRENGTH.", "e.g. --feature 123:40"
                ) from None
        try:
            i, s = it
            out.append((int(i), float(s)))
        except (TypeError, ValueError):
            raise SteeringError(
                f"{it!r} is not a feature and strength.", "give [[index, strength], ...], e.g. [[123, 40.0]]."
            ) from None
    return out


def _check(ws: Workspace, sae_id: str, feats: list[tuple[int, float]], cfg: SteerConfig) -> None:
    for i, s in feats:
        check_feature_index(ws, sae_id, i)
        v = s * cfg.multiplier
        if not math.isfinite(v):
            raise SteeringError(
                f"The strength of feature {i} is {v}.", "use a finite number (e.g. -300..300)."
            )
        if abs(v) > MAX_STRENGTH:
            raise SteeringError(
                f"The strength {v:g} of feature {i} is absurd (more than {MAX_STRENGTH:g}).",
                "use strengths of a few times the feature's max activation, or Neuronpedia's -300..300.",
            )


def make_edit(
    sae: SAE, feats: list[tuple[int, float]], cfg: SteerConfig, prompt_tokens: int = 0
) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The function that edits the hook's value [batch, seq, d], or None when nothing changes. With
    ``cfg.positions == "generated"`` it edits only the positions that write the answer: from the
    prompt's last token (of ``prompt_tokens``) on in a pass over the whole text, and every position of
    a pass that continues it (generation with a cache feeds one new token at a time)."""
    edit = _edit(sae, feats, cfg)
    if edit is None or cfg.positions == "all":
        return edit
    start = max(prompt_tokens - 1, 0)

    def answer_only(h: torch.Tensor) -> torch.Tensor:
        if h.shape[1] == 1:
            return edit(h)
        return torch.cat([h[:, :start], edit(h[:, start:])], 1)

    return answer_only


def _edit(
    sae: SAE, feats: list[tuple[int, float]], cfg: SteerConfig
) -> Callable[[torch.Tensor], torch.Tensor] | None:
    if not feats:
        return None
    idx = torch.tensor([i for i, _ in feats])
    s = torch.tensor([v * cfg.multiplier for _, v in feats], dtype=torch.float32)
    W = sae.W_dec.detach().float()[idx]  # [n, d]
    unit = W / W.norm(dim=1, keepdim=True).clamp_min(1e-12)
    D = unit if cfg.normalise else W
    method = cfg.method
    if method == "add":  # one fixed vector: add it in the model's own dtype and device
        vec = s @ D
        cache: dict[tuple, torch.Tensor] = {}

        def add(h: torch.Tensor) -> torch.Tensor:
            key = (h.device, h.dtype)
            if key not in cache:
                cache[key] = vec.to(device=h.device, dtype=h.dtype)
            return h + cache[key]

        return add

    def edit(h: torch.Tensor) -> torch.Tensor:
        x = h.float()
        dev = x.device
        if method in ("orthogonal", "cap"):
            for k in range(len(idx)):
                u = unit[k].to(dev)
                proj = x @ u  # [b, t]
                new = s[k].to(dev) * proj if method == "orthogonal" else torch.minimum(proj, s[k].to(dev))
                x = x + (new - proj).unsqueeze(-1) * u
        elif method in ("clamp", "ablate"):
            f = sae.encode(x.to(sae.W_enc.device))[..., idx.to(sae.W_enc.device)].to(dev)  # [b, t, n]
            target = torch.zeros_like(f) if method == "ablate" else s.to(dev).expand_as(f)
            x = x + (target - f) @ W.to(dev)
        return x.to(h.dtype)

    return edit


class _Streamer:
    """transformers' streamer protocol: the first put() is the prompt, each later one a new token."""

    def __init__(self, on_token: Callable[[int], None] | None):
        self.on_token, self.first = on_token, True

    def put(self, value: torch.Tensor) -> None:
        if self.first:
            self.first = False
            return
        if self.on_token:
            for t in value.reshape(-1).tolist():
                self.on_token(int(t))

    def end(self) -> None:
        pass


def prompt_ids(lm: LoadedModel, prompt: str, chat_template: bool) -> torch.Tensor:
    if not isinstance(prompt, str) or not prompt.strip():
        raise SteeringError("The prompt is empty.", "type a prompt to continue.")
    limit = lm.context_length
    if len(prompt) > 64 * limit:  # surely longer than the context: refused before tokenizing it
        raise SteeringError(
            f"The prompt is {len(prompt):,} characters; the model reads at most {limit} tokens.",
            "shorten the prompt.",
        )
    tok = lm.tokenizer
    if chat_template and getattr(tok, "chat_template", None):
        enc = tok.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt"
        )
        ids = enc["input_ids"] if hasattr(enc, "keys") else enc
    else:
        ids = torch.tensor([tok(prompt, add_special_tokens=False)["input_ids"]])
    return ids


def generate(
    lm: LoadedModel,
    ids: torch.Tensor,
    cfg: SteerConfig,
    *,
    hook: str | None = None,
    edit=None,
    on_token: Callable[[int], None] | None = None,
    control: JobControl | None = None,
) -> list[int]:
    """Continue ``ids`` [1, n]; with ``edit`` applied at ``hook`` on every position. Seeded."""
    from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

    tok = lm.tokenizer
    n0 = ids.shape[1]

    class FrequencyPenalty(LogitsProcessor):
        def __call__(self, input_ids, scores):
            gen = input_ids[:, n0:]
            if gen.numel() and cfg.frequency_penalty:
                counts = torch.zeros_like(scores).scatter_add_(
                    1, gen, torch.ones_like(gen, dtype=scores.dtype)
                )
                scores = scores - cfg.frequency_penalty * counts
            return scores

    class Interrupt(StoppingCriteria):
        def __call__(self, input_ids, scores, **kw):
            done = bool(control is not None and control.cancelled)
            return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)

    kw: dict[str, Any] = {"do_sample": False}
    if cfg.temperature > 0:
        kw = {"do_sample": True, "temperature": cfg.temperature, "top_p": cfg.top_p}
    torch.manual_seed(cfg.seed)
    edits = {hook: edit} if edit is not None and hook else {}
    with torch.no_grad(), intervene(lm.model, edits):
        out = lm.model.generate(
            ids.to(lm.device),
            attention_mask=torch.ones_like(ids).to(lm.device),
            max_new_tokens=cfg.max_tokens,
            pad_token_id=tok.pad_token_id or tok.eos_token_id,
            logits_processor=LogitsProcessorList([FrequencyPenalty()]),
            stopping_criteria=StoppingCriteriaList([Interrupt()]),
            streamer=_Streamer(on_token),
            top_k=None,
            **kw,
        )
    return out[0, n0:].tolist()


@torch.no_grad()
def forward(
    lm: LoadedModel, ids: torch.Tensor, hook: str, edit, sae: SAE, feats: list[int], later: str | None = None
) -> Forward:
    """One forward pass of ``ids`` [1, T] with ``edit`` applied at ``hook`` (None: unsteered), read at
    the hook: log-probabilities, the activations of features ``feats`` and the hook's activations; and
    the activations at the ``later`` hook when given."""
    edits = {hook: edit} if edit is not None else {}
    hooks = [hook] + ([later] if later else [])
    with intervene(lm.model, edits), capture(lm.model, hooks, stop=False) as got:
        logits = lm.model(input_ids=ids.to(lm.device), use_cache=False).logits[0].float()
    acts = sae.encode(got[hook].float().to(sae.W_enc.device))[0][:, feats] if feats else None
    down = got[later][0].float().cpu() if later else None
    return Forward(torch.log_softmax(logits, -1).cpu(), acts, got[hook][0].float().cpu(), down)


def residual_norm(lm: LoadedModel, ids: torch.Tensor, h: torch.Tensor) -> float:
    """The median norm of the hook's activations ``h`` [T, d] over the non-special tokens of ``ids``."""
    keep = ~torch.isin(ids[0].cpu(), torch.tensor(lm.special_ids(), dtype=torch.long))
    norms = h[keep].norm(dim=-1) if keep.any() else h.norm(dim=-1)
    return float(norms.median())


def relative_strength(sae: SAE, index: int, strength: float, normalise: bool, norm: float) -> float:
    """The length of the vector a strength adds, as a share of the hook's typical residual norm."""
    d = 1.0 if normalise else float(sae.W_dec[index].detach().float().norm())
    return abs(strength) * d / max(norm, 1e-12)
