"""Features of an SAE: the library SAE with its model (``library``), the streaming extraction
(``extraction``), what it stores and every reader (``store``), and the prompt tester: fire and contrast
(``prompt``). Everything public is importable from here."""

from .extraction import Accumulator, extract, finalise
from .library import FeatureError, feature_acts, load_library_sae, model_for_sae, sae_hook
from .prompt import DENSE_THRESHOLD, contrast, fire, ordinary_case
from .store import (
    COACT_FILE,
    EXAMPLES_FILE,
    FEATURES_FILE,
    HIST_BINS,
    KIND,
    LOGIT_HIST_BINS,
    MAX_LABEL_CHARS,
    SPARSITY_FILE,
    STATE_FILE,
    check_feature_index,
    coactivation,
    default_sae,
    feature_columns,
    feature_detail,
    feature_map,
    latest_extraction,
    require_extraction,
    search,
    set_label,
    vocab_strings,
)

__all__ = [
    "extract",
    "feature_columns",
    "feature_detail",
    "fire",
    "contrast",
    "search",
    "coactivation",
    "feature_map",
    "default_sae",
    "latest_extraction",
    "require_extraction",
    "set_label",
    "check_feature_index",
    "load_library_sae",
    "model_for_sae",
    "sae_hook",
    "feature_acts",
    "vocab_strings",
    "FeatureError",
    "Accumulator",
    "finalise",
    "ordinary_case",
    "DENSE_THRESHOLD",
    "COACT_FILE",
    "EXAMPLES_FILE",
    "FEATURES_FILE",
    "HIST_BINS",
    "KIND",
    "LOGIT_HIST_BINS",
    "MAX_LABEL_CHARS",
    "SPARSITY_FILE",
    "STATE_FILE",
]
