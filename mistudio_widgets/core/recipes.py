"""The demo's recipe, shared by the CLI's demo, the tutorials, the tests and the benchmarks: the shouted
sentences its contrast reads, the chat prompt it steers, the hook and training settings of its SAE, and
the steering settings of its climax. Measured in ``benchmarks/bench_shout.py`` (layers, positions,
sampling) and ``benchmarks/bench_bf16.py`` (training)."""

from __future__ import annotations

from typing import Any

from .configs import SteerConfig, TrainConfig
from .workspace import Workspace

SHOUTS = [
    "WHY ARE YOU SHOUTING AT ME? STOP YELLING!",
    "GET OUT OF MY HOUSE RIGHT NOW.",
    "I TOLD YOU TO LEAVE THE DOG ALONE!",
    "NOBODY LISTENS TO ME ANYMORE.",
    "THIS IS THE BEST DAY OF MY LIFE!",
    "COME BACK HERE AND FINISH YOUR DINNER.",
]
PROMPT = "Tell me about your day."
# The prompts the steering settings were chosen on, and four they were not (bench_shout.py reports both)
TUNING_PROMPTS = [
    PROMPT,
    "Write a short message about the weather.",
    "Give me advice for a job interview.",
    "What should I cook for dinner?",
]
HELD_OUT_PROMPTS = [
    "Describe your favourite place to visit.",
    "How do I take care of a houseplant?",
    "Write a note to a friend about the weekend.",
    "What do you think about music?",
]
DEMO_HOOK = "blocks.6.hook_resid_post"


def uppercase_share(text: str) -> float:
    """The share of a text's letters that are capitals."""
    letters = [c for c in text if c.isalpha()]
    return sum(c.isupper() for c in letters) / len(letters) if letters else 0.0


def demo_steer_config(feature: int, strength: float, prompt: str = PROMPT, **changes: Any) -> SteerConfig:
    """The demo's steer: the feature clamped to ``strength`` through the SAE (where it already fires it is
    held there, not pushed further, so the answer does not run away into invented words), only where
    the answer is written (the question is read as asked), with Neuronpedia's sampling settings
    (temperature 0.2, frequency penalty 1, seed 16) against loops. bench_shout.py: greedy decoding with a
    frequency penalty of 0.7 met the readable-shouting target on 3 of the 4 prompts it was chosen on and
    0 of 4 others; these untuned settings on 1 and 2."""
    settings: dict[str, Any] = dict(
        features=[[feature, strength]],
        prompt=prompt,
        max_tokens=40,
        method="clamp",
        positions="generated",
        temperature=0.2,
        frequency_penalty=1.0,
        seed=16,
    )
    return SteerConfig(**{**settings, **changes})


def demo_train_config(ws: Workspace, dataset: str, **changes: Any) -> TrainConfig:
    """The demo's SAE, measured to learn a shouting feature on a 2-core CPU in under a minute: a top-k
    SAE (k=32, 8 x d_model latents) at layer 6's output, 100 steps of 4,096 activations over 204,800
    distinct tokens of the default modern-English corpus (two epochs), harvested once into the activation
    cache, with the default optimiser (schedule-free sign descent)."""
    settings: dict[str, Any] = dict(
        dataset=dataset,
        hook=DEMO_HOOK,
        steps=100,
        batch_tokens=4096,
        train_tokens=204_800,
        expansion_factor=8,
        k=32,
        eval_every=0,
        log_every=10,
        chunk_sequences=1024,
        eval_sequences=8,
        cache_activations=True,
        name=ws.unique_name("run", "demo-topk"),
    )
    return TrainConfig(**{**settings, **changes})
