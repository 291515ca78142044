"""Steering: change what the model writes by editing the activations at an SAE's hook with feature
directions, on every position including the generated ones, and compare with the unsteered
generation from the same prompt, seed and sampling settings.

Methods (``d_i`` is feature i's decoder row, unit-normalised with ``normalise``; ``s_i`` its strength
times the multiplier):
  add          h + sum_i s_i d_i
  orthogonal   (I - P_i) h + s_i P_i h, P_i the projection on d_i (unit)
  cap          the projection of h on d_i (unit) capped at s_i
  clamp        feature i set to s_i through the SAE: h + (s_i - f_i(h)) W_dec[i] (reconstruction error kept)
  ablate       feature i set to 0 the same way
An empty intervention leaves the model untouched. Hooks are removed when generation ends, fails or is
interrupted.
"""

from __future__ import annotations

from .auto import auto_strength
from .edit import (
    MAX_STRENGTH,
    SteeringError,
    forward,
    generate,
    make_edit,
    parse_features,
    prompt_ids,
    relative_strength,
    residual_norm,
)
from .fluency import (
    AUTO_FRACTIONS,
    AUTO_MAX_INVENTED,
    AUTO_MAX_PERPLEXITY,
    AUTO_MAX_REPETITION,
    FLUENCY_RULE,
    baseline_fluency,
    fluency,
    fluency_rule,
    is_fluent,
)
from .presets import PRESET, load_preset, save_preset
from .results import (
    ActivationChange,
    AutoBound,
    AutoRow,
    AutoStrength,
    Fluency,
    FluencyVerdict,
    Forward,
    SteerMetrics,
    SteerResult,
    SweepRow,
)
from .steer import similarity, steer, sweep, token_diff

__all__ = [
    "AUTO_FRACTIONS",
    "AUTO_MAX_INVENTED",
    "AUTO_MAX_PERPLEXITY",
    "AUTO_MAX_REPETITION",
    "FLUENCY_RULE",
    "MAX_STRENGTH",
    "PRESET",
    "ActivationChange",
    "AutoBound",
    "AutoRow",
    "AutoStrength",
    "Fluency",
    "FluencyVerdict",
    "Forward",
    "SteerMetrics",
    "SteerResult",
    "SteeringError",
    "SweepRow",
    "auto_strength",
    "baseline_fluency",
    "fluency",
    "fluency_rule",
    "forward",
    "generate",
    "is_fluent",
    "load_preset",
    "make_edit",
    "parse_features",
    "prompt_ids",
    "relative_strength",
    "residual_norm",
    "save_preset",
    "similarity",
    "steer",
    "sweep",
    "token_diff",
]
