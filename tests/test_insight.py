"""The insight path on the real default model: the demo's recipe learns a shouting feature, the
contrastive search finds it, the automatic strength steers chat answers into capitals while they stay
readable, and the label says what it does. Bad input to contrast and the automatic strength gets clear
errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mistudio_widgets.core.configs import LabelConfig, SteerConfig, TrainConfig
from mistudio_widgets.core.recipes import PROMPT, SHOUTS, demo_steer_config, uppercase_share
from mistudio_widgets.features import FeatureError, contrast, fire, ordinary_case
from mistudio_widgets.features.labeling import label_features
from mistudio_widgets.steering import AUTO_FRACTIONS, SteeringError, auto_strength, steer

pytestmark = pytest.mark.model


def _cli(ws, *args):
    proc = subprocess.run(
        [sys.executable, "-m", "mistudio_widgets.cli", "--workspace", str(ws.root), "--json", *args],
        capture_output=True,
        text=True,
        timeout=600,
    )
    return (
        proc.returncode,
        [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")],
        proc.stderr,
    )


def test_ordinary_case():
    assert (
        ordinary_case("WHY ARE YOU SHOUTING AT ME? STOP YELLING! I SAID NO.")
        == "Why are you shouting at me? Stop yelling! I said no."
    )


@pytest.fixture(scope="module")
def shouting(default_ws, demo_sae):
    found = contrast(default_ws, demo_sae, SHOUTS)  # against the same sentences in ordinary case
    return found


def test_contrast_finds_a_feature_of_shouted_text(default_ws, demo_sae, shouting):
    assert shouting["ranking"] == "relative" and shouting["note"] is None
    top = shouting["features"][0]
    assert top["rate"] >= 0.2 and top["rate_contrast"] <= 0.05, top
    scores = [f["score"] for f in shouting["features"]]
    assert scores == sorted(scores, reverse=True)
    assert shouting["steer_with"] in [f["index"] for f in shouting["features"]]
    # per-token values for both sides, tokens of the ordinary case on the contrast side
    f = shouting["steer_with"]
    assert "".join(shouting["contrast"][0]["tokens"]) == ordinary_case(SHOUTS[0])
    assert max(shouting["texts"][0]["values"][f]) > 0
    assert all(
        len(r["values"][f]) == len(r["tokens"]) for side in ("texts", "contrast") for r in shouting[side]
    )
    # plain fire ranks by activation relative to each feature's own maximum, dense features left out
    r = fire(default_ws, demo_sae, SHOUTS[0])
    rel = [x["relative"] for x in r["features"]]
    assert r["ranking"] == "relative" and rel == sorted(rel, reverse=True) and all(0 < x <= 1 for x in rel)


def test_the_fluency_rule_tells_shouting_from_gibberish(lm):
    """The one fluency rule, on texts a user reported: readable shouting passes, looping invented words do
    not (they passed the old rule at 41% repeated trigrams)."""
    from mistudio_widgets.steering import fluency, is_fluent, prompt_ids

    ids = prompt_ids(lm, PROMPT, True)
    base = fluency(lm, ids, "The weather today is sunny with a light breeze, perfect for a walk in the park.")
    shouting = "It's a GREAT DAY! I'VE BEEN WORKING ON A NEW PROJECT, AND I'M SO HAPPY WITH IT!"
    gibberish = "OVER HESHERES OF THEIRSELLS OF THEIRSELLS OF THEIRSELLS OF THEIR"
    assert is_fluent(fluency(lm, ids, shouting), base), fluency(lm, ids, shouting)
    bad = fluency(lm, ids, gibberish)
    assert not is_fluent(bad, base) and bad.repetition > 0.2, bad
    assert {"hesheres", "theirsells"} <= set(bad.unknown) and bad.invented > 0.15, bad
    # a name the model knows, split into pieces, is not an invented word
    named = fluency(lm, ids, "I'm a helpful AI assistant, trained by Hugging Face to answer questions")
    assert "hugging" not in named.unknown and is_fluent(named, base), named


def test_auto_strength_steers_into_capitals_and_stays_readable(default_ws, demo_sae, shouting):
    """With the demo's settings, the automatic strength makes the chat model shout on at least one of two
    prompts at a strength the rule calls fluent; Generate at that strength shows the very text Auto
    judged, with the same verdict."""
    from mistudio_widgets.steering import is_fluent

    f = shouting["steer_with"]
    shares = []
    for prompt in (PROMPT, "What should I cook for dinner?"):
        auto = auto_strength(default_ws, demo_sae, demo_steer_config(f, 0.0, prompt))
        assert auto.strength is not None, auto.rows
        chosen = next(r for r in auto.rows if r.strength == auto.strength)
        assert chosen.fluent and is_fluent(chosen.fluency, auto.unsteered_fluency)
        assert chosen.fluency.perplexity <= auto.bound.perplexity_limit and auto.text == chosen.text
        assert all(r.fluent is False for r in auto.rows if r.strength > auto.strength)
        if any(not r.fluent for r in auto.rows):  # the ladder found the switch: bisection refined it
            assert any(r.relative not in AUTO_FRACTIONS for r in auto.rows), [r.relative for r in auto.rows]
        r = steer(default_ws, demo_sae, demo_steer_config(f, auto.strength, prompt))
        assert uppercase_share(r.unsteered) < 0.2, r.unsteered
        # Generate shows the text Auto judged and gives it the same verdict by the same rule
        assert r.steered == chosen.text and r.metrics.fluency.fluent is True
        assert r.metrics.fluency.rule == auto.rule
        assert r.metrics.relative_strength[str(f)] == pytest.approx(auto.relative, rel=0.1)
        shares.append(uppercase_share(r.steered))
    # at a strength the rule calls fluent, the feature makes the model shout on at least one prompt
    assert max(shares) > 0.6, shares


def test_the_whole_dictionary_is_labelled_and_the_labels_hold_on_held_out_texts(
    default_ws, demo_sae, shouting
):
    """Every live feature of the demo SAE gets a statistical label scored on texts after the extraction's;
    the shouting feature is named for capitals and scores above chance; a feature's own label predicts
    its held-out texts better than another feature's label; a label at chance titles nothing."""
    import random

    import numpy as np

    from mistudio_widgets.features import feature_columns, latest_extraction, search, shown_labels
    from mistudio_widgets.features.label_evidence import load_evidence
    from mistudio_widgets.features.label_reader import held_out_texts, score_label
    from mistudio_widgets.features.label_stats import fired_keys

    run = label_features(default_ws, demo_sae, LabelConfig(), all_features=True, redo=True)
    live = int((feature_columns(default_ws, latest_extraction(default_ws, demo_sae))["frequency"] > 0).sum())
    labelled = run.of("statistical")
    assert len(labelled) == live
    d = run.distribution()
    # measured on the default modern-English corpus: median 0.65, 43% above chance (on Shakespeare's plays,
    # whose capitals and names repeat, 0.75 and 62%)
    assert d["median"] > 0.6 and d["share_above_chance"] > 0.35, d
    f = shouting["steer_with"]
    lab = next(r for r in labelled if r.feature == f)
    assert "capital" in lab.label and lab.verdict == "above chance", (lab.label, lab.score)
    # the held-out texts come after every text the explainer read
    ev = load_evidence(default_ws, demo_sae)
    n_explained = len(ev.explain.at) // ev.explain.at.length
    assert ev.held_out.first_sequence >= n_explained
    # own label against another feature's, on the own feature's held-out texts
    rng = random.Random(0)
    scored = [r for r in labelled if r.score and r.score.score is not None]
    wins = []
    for r in rng.sample(scored, 100):
        other = rng.choice(scored)
        texts = held_out_texts(ev.held_out, r.feature, fired_keys(ev.explain, r.feature), 20, 0)
        mine, theirs = score_label(r.label, texts).score, score_label(other.label, texts).score
        wins.append(1.0 if mine > theirs else 0.5 if mine == theirs else 0.0)
    assert np.mean(wins) > 0.7, np.mean(wins)
    # a label at chance titles nothing and is not found by search
    shown = shown_labels(default_ws, demo_sae)
    weak = next(r for r in labelled if r.verdict == "at chance")
    assert weak.feature not in shown and lab.feature in shown
    assert weak.feature not in [
        h["index"] for h in search(default_ws, demo_sae, weak.label[:40]) if h["match"] == "label"
    ]


def test_cli_contrast_and_auto_strength(default_ws, demo_sae, shouting):
    rc, lines, err = _cli(
        default_ws, "features", "fire", demo_sae, "--text", SHOUTS[0], "--text", SHOUTS[1], "--ordinary"
    )
    assert rc == 0, err
    # two sentences: one token of the 18 in ordinary case may fire (2% of ordinary tokens over all six)
    assert lines[-1]["steer_with"] is not None and lines[-1]["features"][0]["rate_contrast"] <= 0.1
    f = shouting["steer_with"]
    rc, lines, err = _cli(
        default_ws, "steer", demo_sae, "--feature", f"{f}:auto", "--prompt", PROMPT, "--max-tokens", "30"
    )
    assert rc == 0, err
    auto, summary = lines[0]["auto"], lines[-1]
    assert auto["strength"] > 0 and summary["steered"] != summary["unsteered"]
    # the steer is judged by the rule that chose its strength, named in the same words
    assert summary["metrics"]["fluency"]["rule"] == auto["rule"]


def test_bad_contrast_and_auto_strength_input(default_ws, small_sae, tmp_path):
    with pytest.raises(FeatureError, match="same as the texts"):
        contrast(default_ws, small_sae, "Hello there.", "Hello there.")
    with pytest.raises(FeatureError, match="ordinary case"):
        contrast(default_ws, small_sae, "Hello there.")  # already in its ordinary case
    with pytest.raises(FeatureError, match="empty"):
        contrast(default_ws, small_sae, "   ", "x")
    with pytest.raises(FeatureError, match="empty"):
        contrast(default_ws, small_sae, "LOUD", ["quiet", ""])
    with pytest.raises(FeatureError, match="tokens long"):
        contrast(default_ws, small_sae, "word " * 9000, "quiet")
    with pytest.raises(SteeringError, match="one feature at a time"):
        auto_strength(default_ws, small_sae, SteerConfig(features=[[1, 1.0], [2, 1.0]], prompt="Hi"))
    with pytest.raises(SteeringError, match="admits nothing"):
        auto_strength(
            default_ws, small_sae, SteerConfig(features=[[1, 1.0]], prompt="Hi"), max_perplexity=0.5
        )
    # strengths far beyond the residual norm: nothing stays fluent, which is said, and no strength is chosen
    r = auto_strength(
        default_ws,
        small_sae,
        SteerConfig(features=[[1, 0.0]], prompt="Tell me a story.", max_tokens=12),
        fractions=(20.0, 40.0),
    )
    assert r.strength is None and r.note and "unsteered text is kept" in r.note and r.unsteered
    assert all(not row.fluent for row in r.rows)


def test_ranking_without_an_extraction_falls_back_to_raw_with_a_note(default_ws):
    from mistudio_widgets.train.training import train

    res = train(
        default_ws,
        TrainConfig(
            steps=2,
            batch_tokens=256,
            chunk_sequences=8,
            eval_sequences=2,
            eval_every=0,
            checkpoint_every=0,
            log_every=1,
            expansion_factor=1,
            k=8,
            hook="blocks.3.hook_resid_post",
            name=default_ws.unique_name("run", "no-extraction"),
        ),
    )
    r = fire(default_ws, res.sae_id, "WHY ARE YOU SHOUTING")
    assert r["ranking"] == "raw" and "no finished extraction" in r["note"]
    c = contrast(default_ws, res.sae_id, "WHY ARE YOU SHOUTING")
    assert c["ranking"] == "raw" and "relative ranking" in c["note"]
