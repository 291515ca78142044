"""Steering on the real default model with a small SAE trained here: the edits do what their formulas
say, an empty intervention changes nothing, a strong feature changes the text measurably, generation is
seeded, and no hook is left behind after success, errors or an interrupt."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
import torch

from mistudio_widgets.core.configs import SteerConfig
from mistudio_widgets.core.jobs import JobControl
from mistudio_widgets.features import feature_columns, load_library_sae, model_for_sae
from mistudio_widgets.steering import SteeringError, load_preset, make_edit, save_preset, steer, sweep

PROMPT = "Tell me about the king."


def hooks_in(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.fixture(scope="module")
def setup(default_ws, small_sae, extraction):
    art, sae, _ = load_library_sae(default_ws, small_sae)
    lm = model_for_sae(default_ws, art, sae)
    cols = feature_columns(default_ws, extraction)
    busiest = int(cols["frequency"].argmax())
    return lm, sae, busiest, float(cols["max"][busiest])


def test_edits_follow_their_formulas(setup):
    lm, sae, f, _ = setup
    torch.manual_seed(0)
    h = torch.randn(2, 5, sae.spec.d_in) * 3
    d = sae.W_dec.detach()[f]
    u = d / d.norm()
    add = make_edit(sae, [(f, 4.0)], SteerConfig(method="add"))
    assert torch.allclose(add(h), h + 4.0 * d, atol=1e-5)
    assert torch.allclose(
        make_edit(sae, [(f, 4.0)], SteerConfig(method="add", normalise=True, multiplier=0.5))(h),
        h + 2.0 * u,
        atol=1e-5,
    )
    assert torch.allclose(make_edit(sae, [(f, 1.0)], SteerConfig(method="orthogonal"))(h), h, atol=1e-4)
    ortho = make_edit(sae, [(f, 0.0)], SteerConfig(method="orthogonal"))(h)
    assert torch.allclose(ortho @ u, torch.zeros(2, 5), atol=1e-4)
    capped = make_edit(sae, [(f, 0.5)], SteerConfig(method="cap"))(h)
    assert float((capped @ u).max()) <= 0.5 + 1e-4 and torch.allclose(
        torch.minimum(h @ u, torch.tensor(0.5)), capped @ u, atol=1e-4
    )
    fi = sae.encode(h)[..., f]
    clamp = make_edit(sae, [(f, 7.0)], SteerConfig(method="clamp"))(h)
    assert torch.allclose(clamp - h, (7.0 - fi).unsqueeze(-1) * d, atol=1e-4)
    ablate = make_edit(sae, [(f, 123.0)], SteerConfig(method="ablate"))(h)
    assert torch.allclose(ablate - h, -fi.unsqueeze(-1) * d, atol=1e-4)
    assert make_edit(sae, [], SteerConfig()) is None


def test_an_answer_only_edit_leaves_the_prompt_as_asked(setup):
    """positions="generated": in a pass over the whole text only the prompt's last position and what
    follows are edited; a pass of one new token (generation with a cache) is edited; "all" edits all."""
    lm, sae, f, _ = setup
    torch.manual_seed(0)
    h = torch.randn(1, 7, sae.spec.d_in) * 3
    d = sae.W_dec.detach()[f]
    answer = make_edit(sae, [(f, 4.0)], SteerConfig(method="add", positions="generated"), prompt_tokens=4)
    out = answer(h)
    assert torch.equal(out[:, :3], h[:, :3])  # the prompt, but for its last position, is read as asked
    assert torch.allclose(out[:, 3:], h[:, 3:] + 4.0 * d, atol=1e-5)
    one = h[:, :1]
    assert torch.allclose(answer(one), one + 4.0 * d, atol=1e-5)
    every = make_edit(sae, [(f, 4.0)], SteerConfig(method="add"), prompt_tokens=4)(h)
    assert torch.allclose(every, h + 4.0 * d, atol=1e-5)


def test_empty_intervention_changes_nothing_and_strong_steering_changes_the_text(
    default_ws, small_sae, setup
):
    lm, sae, f, mx = setup
    # transformers adds its own output-recording hooks, for good, the first time hidden states are asked
    # for (the similarity metric does): count from after that
    lm.model(input_ids=torch.tensor([[1, 2]]).to(lm.device), output_hidden_states=True)
    before = hooks_in(lm.model)
    same = steer(default_ws, small_sae, SteerConfig(features=[], prompt=PROMPT, max_tokens=12))
    assert same.steered == same.unsteered and same.metrics.kl_mean == 0.0
    assert same.metrics.similarity == pytest.approx(1.0, abs=1e-5)  # the same text keeps its meaning
    assert all(op["op"] == "equal" for op in same.diff)
    streamed: list = []
    r = steer(
        default_ws,
        small_sae,
        SteerConfig(features=[[f, 12 * mx]], prompt=PROMPT, max_tokens=12),
        on_token=lambda which, t: streamed.append(which),
    )
    assert r.unsteered == same.unsteered, "both generations share the prompt, seed and settings"
    assert r.steered != r.unsteered and r.metrics.kl_mean > 0.01
    assert r.metrics.similarity is not None and -1.0 <= r.metrics.similarity < 0.999
    assert len(r.metrics.kl_per_position) == len(r.unsteered_tokens)
    act = r.metrics.feature_activation[str(f)]
    assert act.after > act.before + mx
    assert r.metrics.perplexity_steered != r.metrics.perplexity_unsteered
    assert streamed.count("unsteered") == len(r.unsteered_tokens) and streamed.count("steered") == len(
        r.steered_tokens
    )
    assert any(op["op"] != "equal" for op in r.diff)
    assert hooks_in(lm.model) == before


def test_sampling_is_seeded_and_interrupts_leave_no_hooks(default_ws, small_sae, setup):
    lm, sae, f, mx = setup
    before = hooks_in(lm.model)
    cfg = SteerConfig(features=[[f, 2 * mx]], prompt=PROMPT, max_tokens=10, temperature=0.9, seed=7)
    a, b = steer(default_ws, small_sae, cfg), steer(default_ws, small_sae, cfg)
    assert (a.unsteered, a.steered) == (b.unsteered, b.steered)
    control, seen = JobControl(), []

    def stop_after_three(which, t):
        seen.append(t)
        if len(seen) == 3:
            control.cancel()

    r = steer(
        default_ws,
        small_sae,
        SteerConfig(features=[[f, mx]], prompt=PROMPT, max_tokens=30),
        on_token=stop_after_three,
        control=control,
    )
    assert r.interrupted and len(r.unsteered_tokens) <= 4
    assert hooks_in(lm.model) == before


@pytest.mark.parametrize(
    "features,prompt,max_tokens,match",
    [
        ([[10**7, 1.0]], PROMPT, 5, "out of range"),
        ([[0, float("nan")]], PROMPT, 5, "finite"),
        ([[0, 1e9]], PROMPT, 5, "absurd"),
        ([[0, 1.0]], "   ", 5, "prompt is empty"),
        ([[0, 1.0]], PROMPT, 10**6, "exceeds the model's context"),
        (["x:y"], PROMPT, 5, "is not a feature"),
    ],
)
def test_bad_steering_input(default_ws, small_sae, setup, features, prompt, max_tokens, match):
    lm = setup[0]
    before = hooks_in(lm.model)
    with pytest.raises(Exception, match=match):
        steer(default_ws, small_sae, SteerConfig(features=features, prompt=prompt, max_tokens=max_tokens))
    assert hooks_in(lm.model) == before


def test_sweep_presets_and_cli(default_ws, small_sae, setup):
    lm, sae, f, mx = setup
    cfg = SteerConfig(features=[[f, 1.0]], prompt=PROMPT, max_tokens=6)
    rows = sweep(default_ws, small_sae, cfg, [0.0, 15 * mx])
    assert [r.strength for r in rows] == [0.0, 15 * mx] and rows[0].kl_mean == 0.0 and rows[1].kl_mean > 0
    name = default_ws.unique_name("steering_preset", "loud")
    save_preset(default_ws, name, small_sae, cfg)
    sae_id, back = load_preset(default_ws, name)
    assert sae_id == default_ws.get(small_sae).id and back == cfg
    with pytest.raises(SteeringError, match="at least one feature"):
        sweep(default_ws, small_sae, SteerConfig(prompt=PROMPT), [1.0])
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mistudio_widgets.cli",
            "--workspace",
            str(default_ws.root),
            "--json",
            "steer",
            small_sae,
            "--feature",
            f"{f}:{10 * mx:.3f}",
            "--prompt",
            PROMPT,
            "--max-tokens",
            "6",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {"unsteered", "steered", "metrics"} <= set(last) and last["metrics"]["kl_mean"] > 0


def test_a_steer_is_read_at_a_later_layer_through_the_sae_there(default_ws, small_sae, setup):
    """The downstream metric: the steered feature's nearest feature (by decoder cosine) in an SAE at a
    later layer, its mean activation over the continuation with and without the steer, as the model
    itself gives it under the edit; nothing changes at strength 0; auto, none and a wrong layer."""
    from mistudio_widgets.core.configs import TrainConfig
    from mistudio_widgets.data.hooks import capture, intervene
    from mistudio_widgets.steering.edit import generate, prompt_ids
    from mistudio_widgets.train.training import train

    lm, sae, f, mx = setup
    at = "blocks.9.hook_resid_post"
    later = train(
        default_ws,
        TrainConfig(
            steps=4, batch_tokens=512, chunk_sequences=16, eval_sequences=4, eval_every=0,
            checkpoint_every=0, log_every=2, expansion_factor=1, k=8, hook=at,
            name=default_ws.unique_name("run", "later-sae"),
        ),
    ).sae_id  # fmt: skip
    try:
        cfg = SteerConfig(features=[[f, 12 * mx]], prompt=PROMPT, max_tokens=8, downstream=later)
        r = steer(default_ws, small_sae, cfg)
        d = r.metrics.downstream
        assert d is not None and d.sae == later and d.hook == at
        _, lsae, _ = load_library_sae(default_ws, later)
        W = lsae.W_dec.detach().float()
        u = sae.W_dec.detach().float()[f]
        cos = (W / W.norm(dim=1, keepdim=True)) @ (u / u.norm())
        m = d.matched[str(f)]
        assert m.index == int(cos.argmax()) and m.cosine == pytest.approx(float(cos.max()), abs=1e-5)
        # the same figures from the model under the edit, read at the later hook
        ids = prompt_ids(lm, PROMPT, True)
        seq = torch.cat([ids, torch.tensor([generate(lm, ids, cfg)])], 1)
        edit = make_edit(sae, [(f, 12 * mx)], cfg)
        means = []
        for e in (None, edit):
            edits = {"blocks.6.hook_resid_post": e} if e else {}
            with torch.no_grad(), intervene(lm.model, edits), capture(lm.model, at) as got:
                lm.model(input_ids=seq.to(lm.device), use_cache=False)
            means.append(lsae.encode(got[at][0].float())[ids.shape[1] :].mean(0).detach())
        assert m.before == pytest.approx(float(means[0][m.index]), abs=1e-4)
        assert m.after == pytest.approx(float(means[1][m.index]), abs=1e-4)
        rise = means[1] - means[0]
        assert d.most_raised and d.most_raised[0].index == int(rise.argmax())
        from mistudio_widgets.cli.steer import describe_steer

        told = describe_steer(r)  # the CLI says it
        assert f"at {at}, read through" in told and f"feature {f}'s nearest, feature {m.index}" in told
        still = steer(default_ws, small_sae, SteerConfig(features=[[f, 0.0]], prompt=PROMPT, max_tokens=8))
        assert still.metrics.downstream is not None  # auto finds a later SAE of the same model
        assert int(still.metrics.downstream.hook.split(".")[1]) in (7, 8, 9)  # the nearest, at most 9
        assert all(x.before == x.after for x in still.metrics.downstream.matched.values())
        none = steer(default_ws, small_sae, dataclasses.replace(cfg, downstream="none"))
        assert none.metrics.downstream is None and none.steered == r.steered
        with pytest.raises(SteeringError, match="not a later layer"):
            steer(default_ws, small_sae, dataclasses.replace(cfg, downstream=small_sae))
    finally:
        default_ws.delete(later, cascade=True, force=True)
