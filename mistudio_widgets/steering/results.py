"""What steering returns, typed: a steered generation with its metrics, a sweep's rows and an
automatic strength with the sweep behind it. ``to_dict()`` gives the JSON the CLI prints and the
widget sends to the page."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Forward:
    """One forward pass read at the SAE's hook: log-probabilities [T, vocab], the named features'
    activations [T, n] (None when none were asked for) and the hook's activations [T, d]."""

    logprobs: torch.Tensor
    acts: torch.Tensor | None
    residual: torch.Tensor
    later: torch.Tensor | None = None  # a later hook's activations [T, d], when one was asked for


@dataclass
class Fluency:
    """How fluent one continuation reads (see :func:`.fluency.fluency`)."""

    perplexity: float  # of the lower-cased text, read by the unsteered model after the prompt
    repetition: float  # share of word (or token) trigrams that repeat an earlier one
    invented: float  # share of its words (3+ letters) that are invented
    unknown: list[str] = field(default_factory=list)  # the invented words (at most 8)


@dataclass
class FluencyVerdict:
    """Both continuations' fluency and the rule's verdict on the steered one."""

    unsteered: Fluency
    steered: Fluency
    fluent: bool
    rule: str


@dataclass
class ActivationChange:
    """A steered feature's mean activation over the continuation, unsteered and steered."""

    before: float
    after: float


@dataclass
class DownstreamFeature:
    """A feature of the later SAE: its mean activation over the continuation, unsteered and steered, and
    (for a steered feature's counterpart) the cosine between the two decoder directions."""

    index: int
    cosine: float | None
    before: float
    after: float


@dataclass
class DownstreamChange:
    """The steer read at a later layer through the SAE there (see :mod:`.downstream`)."""

    sae: str
    name: str
    hook: str
    matched: dict[str, DownstreamFeature]  # per steered feature: its nearest later feature
    most_raised: list[DownstreamFeature]  # the later features the steer raised most
    no_match: float  # a nearest decoder cosine below this is no counterpart (said as such)


@dataclass
class SteerMetrics:
    """What a steer changed, measured on one shared text (the prompt and the unsteered continuation)."""

    kl_per_position: list[float]  # KL(steered || unsteered) at each continuation position
    kl_mean: float
    fluency: FluencyVerdict
    residual_norm: float  # the hook's median activation norm over that text
    relative_strength: dict[str, float]  # per feature: the added vector's length / residual_norm
    similarity: float | None = None  # the two continuations' meaning: cosine of mean-pooled hidden states
    feature_activation: dict[str, ActivationChange] = field(default_factory=dict)
    downstream: DownstreamChange | None = None  # at a later layer, when an SAE of it exists
    perplexity_unsteered: float | None = None  # of the reference text (None: too short to measure)
    perplexity_steered: float | None = None
    reference: str | None = None  # which text the perplexities read: "given", or the shared text
    seconds: dict[str, float] = field(default_factory=dict)  # generation time, unsteered and steered


@dataclass
class SteerResult:
    """Unsteered and steered continuations of one prompt, side by side, with the metrics."""

    sae: str
    hook: str
    prompt: str
    features: list[tuple[int, float]]
    method: str
    unsteered: str
    steered: str
    unsteered_tokens: list[str]
    steered_tokens: list[str]
    diff: list[dict[str, Any]]  # difflib opcodes over the tokens: {op, unsteered, steered}
    metrics: SteerMetrics
    interrupted: bool

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class SweepRow:
    """One strength of a sweep: the steered text and what it changed."""

    strength: float
    steered: str
    kl_mean: float
    perplexity: float | None
    activation: dict[str, float]  # per feature: its mean activation over the steered continuation

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class AutoRow:
    """One strength the automatic sweep tried."""

    strength: float
    relative: float  # the strength as a share of the residual norm
    text: str
    fluency: Fluency
    fluent: bool

    def to_dict(self) -> dict[str, Any]:
        """Flat, as the page and the CLI's JSON show a row: strength, relative, text, the fluency
        figures and the verdict."""
        return {
            "strength": self.strength,
            "relative": self.relative,
            "text": self.text,
            **dataclasses.asdict(self.fluency),
            "fluent": self.fluent,
        }


@dataclass
class AutoBound:
    """The fluency bound the sweep held each strength to."""

    max_perplexity: float  # a ratio to the unsteered continuation's perplexity
    perplexity_limit: float  # that ratio times the unsteered perplexity
    max_repetition: float


@dataclass
class AutoStrength:
    """The largest strength whose steered text stays fluent (None when none does), and the sweep."""

    sae: str
    feature: int
    strength: float | None
    relative: float | None
    rows: list[AutoRow]
    unsteered: str
    unsteered_fluency: Fluency
    text: str | None  # the steered text at the chosen strength
    rule: str
    bound: AutoBound
    residual_norm: float
    decoder_norm: float
    interrupted: bool
    note: str | None  # why nothing was chosen

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["rows"] = [r.to_dict() for r in self.rows]
        return out
