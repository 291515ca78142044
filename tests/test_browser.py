"""Real-browser tests: the widgets render in JupyterLab and in Voila, and an action in the page reaches
the kernel and the kernel's answer comes back."""

from __future__ import annotations

import json
import os
import re
import time
import uuid

import pytest
from browser import VOILA_READY, free_port, jupyter_env, lab_command, server, voila_command, write_notebook
from playwright.sync_api import expect

pytestmark = pytest.mark.browser
expect.set_options(timeout=90_000)
SETUP = "import mistudio_widgets as ms\nws = ms.open_workspace()"


@pytest.fixture(scope="module")
def lab(default_ws, tmp_path_factory):
    root = tmp_path_factory.mktemp("lab")
    (root / "yell.jsonl").write_text(
        "\n".join(json.dumps({"text": t}) for t in ["WHY ARE YOU SHOUTING?", "A calm sentence."] * 30)
    )
    port, token = free_port(), uuid.uuid4().hex
    env = jupyter_env(root / ".jupyter", default_ws.root)
    with server(
        lab_command(root, port, token),
        env,
        f"http://127.0.0.1:{port}/api/status?token={token}",
        root / "lab.log",
    ):
        yield {"root": root, "url": f"http://127.0.0.1:{port}", "token": token}


def open_and_run(page, lab, name: str, cells: list[str]):
    write_notebook(lab["root"] / name, cells)
    page.goto(f"{lab['url']}/lab/workspaces/{uuid.uuid4().hex[:8]}/tree/{name}?reset&token={lab['token']}")
    expect(page.get_by_text("Python 3 (ipykernel) | Idle")).to_be_visible()
    page.get_by_text("Run", exact=True).first.click()
    page.get_by_text("Run All Cells", exact=True).click()


def set_field(locator, value) -> None:
    """Type into a field and commit it, as leaving the field does."""
    locator.fill(str(value))
    locator.dispatch_event("change")


def generate_in_pane(pane, prompt: str, *, max_tokens: int, strength: float, index: int) -> None:
    """Set the prompt, the length and one feature's strength in a SteeringPane, then press Generate."""
    set_field(pane.get_by_test_id("st-prompt"), prompt)
    set_field(pane.get_by_test_id("st-max-tokens"), max_tokens)
    set_field(pane.locator(f'[data-testid="st-strength"][data-index="{index}"]'), strength)
    pane.get_by_test_id("st-generate").click()


def test_dataset_picker_in_lab_tokenizes_through_the_kernel(page, lab):
    open_and_run(
        page,
        lab,
        "picker.ipynb",
        [SETUP, "from mistudio_widgets.widgets import DatasetPicker\nDatasetPicker(ws)"],
    )
    picker = page.get_by_test_id("dataset-picker")
    expect(picker).to_be_visible()
    # add a local dataset from the page
    picker.get_by_test_id("ds-source").fill(str(lab["root"] / "yell.jsonl"))
    name = f"lab-yell-{uuid.uuid4().hex[:6]}"
    picker.get_by_placeholder("(derived)").fill(name)
    picker.get_by_test_id("ds-add").click()
    expect(picker.get_by_test_id("message")).to_contain_text(f"Added {name}: 60 documents")
    expect(picker.locator(f'tr[data-name="{name}"]')).to_have_class(re.compile("selected"))
    # tokenize it with the default model: the statistics and preview come back from the kernel
    picker.get_by_test_id("ds-model").select_option(label="SmolLM2-135M-Instruct")
    picker.get_by_test_id("ds-context").fill("16")
    picker.get_by_test_id("ds-tokenize").click()
    expect(picker.get_by_test_id("message")).to_contain_text(
        re.compile(r"Tokenized into \d+ sequences of 16 tokens")
    )
    stats = picker.get_by_test_id("ds-stats")
    expect(stats).to_contain_text("Sequences")
    expect(stats.locator("svg.histogram rect.binbar").first).to_be_attached()
    expect(picker.get_by_test_id("ds-preview")).to_contain_text("SHOUT")
    if os.environ.get("MISTUDIO_SCREENSHOTS"):
        picker.screenshot(path=os.environ["MISTUDIO_SCREENSHOTS"] + "/dataset_picker.png")
    # bad input comes back as a clear error in the page
    picker.get_by_test_id("ds-source").fill(str(lab["root"] / "missing.txt"))
    picker.get_by_test_id("ds-add").click()
    expect(picker.get_by_test_id("error")).to_contain_text("No file or folder")
    expect(picker.get_by_test_id("error")).to_contain_text("Fix:")


def test_model_picker_and_system_monitor_in_lab(page, lab):
    open_and_run(
        page,
        lab,
        "models.ipynb",
        [
            SETUP,
            "from mistudio_widgets.widgets import ModelPicker, SystemMonitor\nmp = ModelPicker(ws)\nmp",
            "sm = SystemMonitor(ws, interval=0.5)\nsm",
        ],
    )
    mp = page.get_by_test_id("model-picker")
    mp.get_by_test_id("model-list").locator(
        'tr[data-name="SmolLM2-135M-Instruct"]'
    ).click()  # other tests add models
    expect(mp.get_by_test_id("model-arch")).to_contain_text("llama")
    expect(mp.get_by_test_id("model-memory")).to_contain_text("GiB")
    mp.get_by_test_id("model-quant").select_option("4bit")
    expect(mp.get_by_test_id("model-memory")).to_contain_text("0.1")
    mp.get_by_test_id("hook-point").select_option("hook_mlp_out")
    expect(mp.get_by_test_id("hook-name")).to_have_text("blocks.15.hook_mlp_out")
    mp.get_by_test_id("model-load").click()
    expect(mp.get_by_test_id("message")).to_contain_text("Loaded SmolLM2-135M-Instruct on cpu")
    # the system monitor is fed from a background thread through the kernel's loop
    sm = page.get_by_test_id("system-monitor")
    sm.scroll_into_view_if_needed()
    expect(sm.get_by_test_id("sys-cpu")).to_contain_text("cores")
    expect(sm.get_by_test_id("sys-ram")).to_contain_text("GiB")
    poly = sm.locator("polyline")
    expect(poly).to_have_attribute("points", re.compile(r"(\S+\s+){3,}\S+"))
    expect(sm.get_by_test_id("sys-nogpu").or_(sm.get_by_text("GPU 0"))).to_be_visible()


def test_studio_in_voila(page, default_ws, tmp_path, extracted_sae):
    """The shipped dashboard (dashboards/studio.ipynb with the Voila settings of jupyter-config/)."""
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    port = free_port()
    env = {
        **jupyter_env(tmp_path / ".jupyter", default_ws.root),
        "JUPYTER_CONFIG_PATH": str(repo / "jupyter-config"),
        "JUPYTER_PATH": str(repo / "share" / "jupyter"),  # the dashboard's page template
    }
    with server(
        voila_command(repo / "dashboards" / "studio.ipynb", port),
        env,
        f"http://127.0.0.1:{port}/{VOILA_READY}",
        tmp_path / "voila.log",
    ):
        page.goto(f"http://127.0.0.1:{port}/")
        picker = page.get_by_test_id("dataset-picker")
        expect(picker).to_be_visible()
        expect(picker.locator('tr[data-name="modern-english"]')).to_be_visible()
        # an action from the page: selecting the tokenization loads its statistics from the kernel
        picker.locator('tr[data-name="modern-english"]').click()
        picker.locator('tr[data-name="modern-english"] button', has_text="ctx 128").first.click()
        expect(picker.get_by_test_id("ds-stats")).to_contain_text("Sequences")
        page.get_by_role("tab", name="Models").click()
        page.get_by_test_id("model-list").locator('tr[data-name="SmolLM2-135M-Instruct"]').click()
        expect(page.get_by_test_id("model-arch")).to_contain_text("134,515,008")
        page.get_by_role("tab", name="Training").click()
        expect(page.get_by_test_id("training-configurator").get_by_test_id("train-estimate")).to_contain_text(
            "Latents"
        )
        page.get_by_role("tab", name="SAEs").click()
        expect(page.get_by_test_id("sae-library")).to_be_visible()
        page.get_by_role("tab", name="Features").click()
        fb = page.get_by_test_id("feature-browser")
        expect(fb.get_by_test_id("fb-sae")).to_have_value(extracted_sae)  # the newest extracted SAE
        fb.locator('[data-testid="feature-row"][data-index="3"]').click()
        expect(fb.get_by_test_id("fb-title")).to_contain_text("Feature 3")
        fb.get_by_test_id("fb-prompt").fill("Good morrow, my lord!")
        fb.get_by_test_id("fb-prompt-go").click()
        expect(fb.get_by_test_id("fb-prompt-features").locator("button").first).to_be_visible()
        expect(page.locator(".mistudio-feature-map .js-plotly-plot")).to_be_visible()
        fb.get_by_test_id("fb-steer").click()  # "Steer with this"
        pane = page.get_by_test_id("steering-pane")
        expect(pane.locator('[data-testid="st-feature"][data-index="3"]')).to_be_visible()
        generate_in_pane(pane, "Tell me about the king.", max_tokens=6, strength=50, index=3)
        expect(pane.get_by_test_id("st-metrics")).to_contain_text("KL")
        expect(pane.get_by_test_id("st-steered").locator(".stok").first).to_be_visible()
        if os.environ.get("MISTUDIO_SCREENSHOTS"):
            pane.screenshot(path=os.environ["MISTUDIO_SCREENSHOTS"] + "/steering.png")
        expect(page.get_by_test_id("system-monitor").get_by_test_id("sys-cpu")).to_contain_text("cores")
        # the dashboard exposes its widgets and nothing else: no notebook source, no files, no Jupyter APIs
        assert "open_workspace" not in page.content()
        for path in (
            "/voila/files/studio.ipynb",
            "/voila/files/../README.md",
            "/api/contents",
            "/api/kernels",
            "/tree",
            "/files/studio.ipynb",
        ):
            assert page.request.get(f"http://127.0.0.1:{port}{path}").status in (403, 404), path


def test_training_from_the_configurator_updates_the_charts_and_stops(page, lab):
    name = f"browser-{uuid.uuid4().hex[:6]}"
    settings = dict(
        steps=5000,
        batch_tokens=256,
        chunk_sequences=24,
        eval_every=0,
        eval_sequences=4,
        log_every=1,
        expansion_factor=2,
        k=16,
        checkpoint_every=0,
        name=name,
    )
    open_and_run(
        page,
        lab,
        "train.ipynb",
        [
            SETUP,
            "from mistudio_widgets.widgets import TrainingConfigurator, TrainingMonitor\n"
            "mon = TrainingMonitor(ws, runs=[])\ncfg = TrainingConfigurator(ws, monitor=mon)\n"
            f"cfg.values = {{**cfg.values, **{settings!r}}}\ndisplay(cfg, mon)",
        ],
    )
    conf = page.get_by_test_id("training-configurator")
    expect(conf.get_by_test_id("train-estimate")).to_contain_text("Latents")
    # inline validation from the kernel: an impossible k disables Start and says why
    conf.locator('[data-field="k"]').fill("99999")
    conf.locator('[data-field="k"]').dispatch_event("change")
    expect(conf.get_by_test_id("train-problems")).to_contain_text("larger than d_sae")
    expect(conf.get_by_test_id("train-start")).to_be_disabled()
    conf.locator('[data-field="k"]').fill("16")
    conf.locator('[data-field="k"]').dispatch_event("change")
    expect(conf.get_by_test_id("train-start")).to_be_enabled()
    conf.get_by_test_id("train-start").click()
    monitor = page.get_by_test_id("training-monitor")
    row = monitor.locator(f'tr[data-run="{name}"]')
    expect(row.get_by_test_id("run-status")).to_have_text("running")
    expect(row.get_by_test_id("run-step")).to_have_text(re.compile(r"^([3-9]|\d{2,}) / 5,000"))
    expect(monitor.get_by_test_id("run-device")).to_contain_text(re.compile(r"GPU \d|CPU: \d+ cores"))
    # the plotly loss chart has drawn a line from the catalog's metric history
    line = page.locator(".js-plotly-plot .scatterlayer .trace path.js-line").first
    expect(line).to_have_attribute("d", re.compile(r"M.+L.+"))
    if os.environ.get("MISTUDIO_SCREENSHOTS"):
        page.wait_for_timeout(3000)
        page.screenshot(path=os.environ["MISTUDIO_SCREENSHOTS"] + "/training.png", full_page=True)
    row.get_by_test_id("run-stop").click()
    expect(row.get_by_test_id("run-status")).to_have_text("interrupted")
    expect(row.get_by_test_id("run-resume")).to_be_visible()


def test_the_eta_shown_at_a_quarter_of_a_run_holds(page, lab):
    """At a quarter of a run's steps the ETA the monitor shows is within a factor of two of the time that
    then remains (the pace measures harvest and steps apart). The ratio is printed for the report; no
    time is asserted."""
    name = f"eta-{uuid.uuid4().hex[:6]}"
    settings = dict(
        steps=40,
        batch_tokens=1024,
        chunk_sequences=24,
        eval_every=0,
        eval_sequences=4,
        log_every=1,
        expansion_factor=2,
        k=16,
        checkpoint_every=0,
        name=name,
    )
    open_and_run(
        page,
        lab,
        "eta.ipynb",
        [
            SETUP,
            "from mistudio_widgets.widgets import TrainingConfigurator, TrainingMonitor\n"
            "mon = TrainingMonitor(ws, runs=[])\ncfg = TrainingConfigurator(ws, monitor=mon)\n"
            f"cfg.values = {{**cfg.values, **{settings!r}}}\ndisplay(cfg, mon)",
        ],
    )
    conf = page.get_by_test_id("training-configurator")
    expect(conf.get_by_test_id("train-start")).to_be_enabled()
    conf.get_by_test_id("train-start").click()
    row = page.get_by_test_id("training-monitor").locator(f'tr[data-run="{name}"]')
    expect(row.get_by_test_id("run-step")).to_have_text(re.compile(r"^(1\d|[2-9]\d) / 40"), timeout=300_000)
    at, eta_text = time.monotonic(), row.get_by_test_id("run-eta").inner_text()
    step = int(row.get_by_test_id("run-step").inner_text().split("/")[0])
    expect(row.get_by_test_id("run-status")).to_have_text("done", timeout=300_000)
    remaining = time.monotonic() - at
    m = re.search(r"([\d.]+) (s|min)", eta_text)
    assert m, eta_text
    eta = float(m.group(1)) * (60 if m.group(2) == "min" else 1)
    ratio = eta / max(remaining, 1e-3)
    print(f"ETA at step {step}/40: {eta_text!r}; then {remaining:.1f} s remained; ratio {ratio:.2f}")
    assert 0.5 <= ratio <= 2.0, (eta_text, remaining)


def test_a_sweep_typed_in_the_configurator_trains_its_grid_and_the_pareto_view_opens_an_sae(page, lab):
    """The sweep field takes a grid as text; Start trains one SAE per point from one harvest; the monitor
    draws one point per run in its L0 / explained-variance view, and clicking a point opens that SAE."""
    settings = dict(
        steps=6,
        batch_tokens=256,
        chunk_sequences=24,
        eval_every=0,
        eval_sequences=4,
        log_every=1,
        expansion_factor=2,
        checkpoint_every=0,
        name=None,
    )
    open_and_run(
        page,
        lab,
        "sweep.ipynb",
        [
            SETUP,
            "from mistudio_widgets.widgets import TrainingConfigurator, TrainingMonitor\n"
            "mon = TrainingMonitor(ws, runs=[])\ncfg = TrainingConfigurator(ws, monitor=mon)\n"
            "opened = []\nmon.on_open = opened.append\n"
            f"cfg.values = {{**cfg.values, **{settings!r}}}\ndisplay(cfg, mon)",
        ],
    )
    conf = page.get_by_test_id("training-configurator")
    grid = conf.locator('[data-field="sweep"]')
    set_field(grid, "k: 4, 4")  # a repeated point is refused before anything starts
    expect(conf.get_by_test_id("train-problems")).to_contain_text("more than once")
    expect(conf.get_by_test_id("train-start")).to_be_disabled()
    set_field(grid, "k: 4, 16; architecture: topk, matryoshka_batchtopk")
    expect(conf.get_by_test_id("train-estimate")).to_contain_text(re.compile(r"SAEs \(sweep\)\s*4"))
    conf.get_by_test_id("train-start").click()
    monitor = page.get_by_test_id("training-monitor")
    expect(monitor.locator("tr[data-run] [data-testid=run-status]", has_text="done")).to_have_count(4)
    # the Pareto view: four points in the explained-variance panel, all filled (finished)
    pareto = page.locator(".js-plotly-plot", has_text="explained variance vs L0")
    points = pareto.locator(".subplot.xy .scatterlayer .trace").first.locator("path.point")
    expect(points).to_have_count(4)
    names = pareto.locator(".subplot.xy .scatterlayer .trace").first.locator(".textpoint text")
    expect(names).to_have_count(4)  # each point carries its run's name
    shown = [n.text_content() for n in names.all()]
    assert len(set(shown)) == 4 and all(shown), shown
    points.first.scroll_into_view_if_needed()
    box = points.first.bounding_box()
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    expect(monitor.get_by_test_id("message")).to_contain_text("Opened the SAE of")
    if os.environ.get("MISTUDIO_SCREENSHOTS"):
        page.screenshot(path=os.environ["MISTUDIO_SCREENSHOTS"] + "/sweep.png", full_page=True)


@pytest.fixture(scope="module")
def extracted_sae(default_ws):
    from mistudio_widgets.core.configs import ExtractConfig, TrainConfig
    from mistudio_widgets.features import extract
    from mistudio_widgets.train.training import train

    res = train(
        default_ws,
        TrainConfig(
            steps=3,
            batch_tokens=512,
            chunk_sequences=16,
            eval_sequences=4,
            eval_every=0,
            checkpoint_every=0,
            log_every=1,
            expansion_factor=1,
            k=8,
            hook="blocks.6.hook_resid_post",
            name=default_ws.unique_name("run", "browser-features"),
        ),
    )
    extract(default_ws, res.sae_id, ExtractConfig(tokens=1024, top_k=5, batch_size=4))
    return res.sae_id


def test_feature_browser_in_lab(page, lab, default_ws, extracted_sae):
    import numpy as np

    from mistudio_widgets.features import feature_columns

    cols = feature_columns(default_ws, extracted_sae)
    open_and_run(
        page,
        lab,
        "features.ipynb",
        [
            SETUP,
            "from mistudio_widgets.widgets import FeatureBrowser, FeatureMap\nfb = FeatureBrowser(ws, "
            f"sae={extracted_sae!r})\nfb",
            "FeatureMap(fb)",
        ],
    )
    fb = page.get_by_test_id("feature-browser")
    expect(fb.get_by_test_id("fb-count")).to_have_text("576 of 576 features")
    expect(fb.get_by_test_id("feature-row").first).to_be_visible()
    assert fb.get_by_test_id("feature-row").count() < 80, "only the visible rows are in the page"
    # sorting and filtering happen in the page on the binary columns
    fb.get_by_test_id("fb-sort").select_option("frequency")
    expect(fb.get_by_test_id("feature-row").first).to_have_attribute(
        "data-index", str(int(np.argmax(cols["frequency"])))
    )
    fb.get_by_test_id("fb-list").evaluate(
        "el => { el.scrollTop = el.scrollHeight; el.dispatchEvent(new Event('scroll')); }"
    )
    rarest = int(np.argsort(-cols["frequency"], kind="stable")[-1])
    expect(fb.locator(f'[data-testid="feature-row"][data-index="{rarest}"]')).to_be_attached()
    fb.get_by_test_id("fb-filter").fill("7")
    expect(fb.get_by_test_id("fb-count")).to_have_text("1 of 576 features")
    busiest = int(np.argmax(cols["frequency"]))
    fb.get_by_test_id("fb-filter").fill(str(busiest))
    fb.locator(f'[data-testid="feature-row"][data-index="{busiest}"]').click()
    expect(fb.get_by_test_id("fb-title")).to_contain_text(f"Feature {busiest}")
    peak = fb.get_by_test_id("fb-examples").locator(".ftok.peak").first
    expect(peak).to_have_attribute("data-tip", re.compile(r"  \d+\.\d{3} \(\d+% of max\)$"))
    peak.hover()  # the value shows in the page's own tip, under the token
    expect(fb.get_by_test_id("fb-tip")).to_be_visible()
    expect(fb.get_by_test_id("fb-tip")).to_have_text(peak.get_attribute("data-tip"))
    # examples are centred on their peak token: the peaks of the first two line up in one column
    centres = (
        fb.get_by_test_id("fb-examples")
        .locator(".ftok.peak")
        .evaluate_all(
            "(els) => els.slice(0, 2).map((e) => e.getBoundingClientRect()).map((r) => r.left + r.width / 2)"
        )
    )
    assert len(centres) == 2 and abs(centres[0] - centres[1]) <= 2, centres
    # a window shows 8 tokens either side of its peak; a click shows the whole window
    line = fb.get_by_test_id("fb-example-line").first
    far = line.locator(".ftok.far")  # the stored window is 25 tokens: some lie farther than 8 from the peak
    expect(far.first).to_be_hidden()
    line.click()
    expect(far.first).to_be_visible()
    line.click()
    expect(far.first).to_be_hidden()
    # the examples coloured by why the feature fires: saliency, then the model's attention, then back
    colour = fb.get_by_test_id("fb-colour-by")
    colour.select_option("saliency")
    expect(fb.get_by_test_id("fb-why-note")).to_contain_text("integrated gradients")
    peak = fb.get_by_test_id("fb-examples").locator(".ftok.peak").first
    expect(peak).to_have_attribute("data-tip", re.compile(r"  [+-]\d+\.\d{3} of the activation$"))
    expect(fb.get_by_test_id("fb-why-note")).to_contain_text(re.compile(r"within \d+\.\d%"))
    if os.environ.get("MISTUDIO_SCREENSHOTS"):
        shot = os.environ["MISTUDIO_SCREENSHOTS"] + "/examples_saliency.png"
        fb.get_by_test_id("fb-examples").screenshot(path=shot)
    colour.select_option("attention")
    expect(fb.get_by_test_id("fb-why-note")).to_contain_text("attention of layer 6 from the marked token")
    expect(peak).to_have_attribute("data-tip", re.compile(r"% of the attention from the marked token$"))
    colour.select_option("activation")
    expect(peak).to_have_attribute("data-tip", re.compile(r"  \d+\.\d{3} \(\d+% of max\)$"))
    # its contexts in groups of like hidden states
    fb.get_by_test_id("fb-cluster-go").click()
    expect(fb.get_by_test_id("fb-cluster").first).to_contain_text("context")
    expect(fb.get_by_test_id("fb-clusters")).to_contain_text("contexts")
    # the test box: this feature on a typed text, token by token
    fb.get_by_test_id("fb-try-text").fill("The rain in Spain stays mainly in the plain.")
    fb.get_by_test_id("fb-try").click()
    expect(fb.get_by_test_id("fb-try-out")).to_contain_text("peak")
    expect(fb.get_by_test_id("fb-try-out").locator(".ftok", has_text="Spain")).to_be_visible()
    fb.get_by_test_id("fb-saliency").click()  # which of its tokens make the feature fire
    expect(fb.get_by_test_id("fb-saliency-line").locator(".ftok")).not_to_have_count(0)
    expect(fb.get_by_test_id("fb-try-out")).to_contain_text("integrated gradients")
    expect(fb.get_by_test_id("fb-attention-line").locator(".ftok")).not_to_have_count(0)
    # why this next token: the features that push " Paris" after the prompt, checked by ablation
    fb.get_by_test_id("fb-attr-prompt").fill("The capital of France is")
    fb.get_by_test_id("fb-attr-target").fill(" Paris")
    fb.get_by_test_id("fb-attr-go").click()
    table = fb.get_by_test_id("fb-attr-table")
    expect(table.locator("tr[data-index]")).to_have_count(11)  # ten features and the SAE's error term
    expect(table.locator('tr[data-index="-1"]')).to_contain_text("error")
    expect(fb.get_by_test_id("fb-attr-out")).to_contain_text('" Paris"')
    # a label with markup is shown as text, never run
    hostile = '<img src=x onerror="window.__pwned=1">loud'
    fb.get_by_test_id("fb-label-input").fill(hostile)
    fb.get_by_test_id("fb-label-save").click()
    expect(fb.get_by_test_id("fb-title")).to_contain_text(hostile)
    expect(fb.get_by_test_id("fb-label-history")).to_contain_text("manual")
    assert page.evaluate("window.__pwned") is None
    assert default_ws.labels(extracted_sae, busiest)[0]["label"] == hostile
    # the prompt tester: type, see the features, open one
    fb.get_by_test_id("fb-prompt").fill("WHY ARE YOU SHOUTING")
    fb.get_by_test_id("fb-prompt-go").click()
    first = fb.get_by_test_id("fb-prompt-features").locator("button").first
    expect(first).to_be_visible()
    idx = first.get_attribute("data-index")
    first.click()
    expect(fb.get_by_test_id("fb-title")).to_contain_text(f"Feature {idx}")
    # markup typed into the prompt comes back as tokens shown as text
    fb.get_by_test_id("fb-prompt").fill(
        '<img src=x onerror="window.__pwned=2"><script>window.__pwned=3</script>'
    )
    fb.get_by_test_id("fb-prompt-go").click()
    expect(fb.get_by_test_id("fb-prompt-out").locator(".ftok", has_text="script").first).to_be_visible()
    assert (
        page.evaluate("window.__pwned") is None
        and fb.get_by_test_id("fb-prompt-out").locator("img, script").count() == 0
    )
    # the feature map: clicking a point opens that feature
    before = fb.get_by_test_id("fb-title").inner_text()
    point = page.locator(".mistudio-feature-map .scatterlayer .point").nth(100)
    point.scroll_into_view_if_needed()
    box = point.bounding_box()
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    expect(fb.get_by_test_id("fb-title")).not_to_have_text(before)
    expect(fb.get_by_test_id("fb-title")).to_contain_text(re.compile(r"Feature \d+"))
    fb.scroll_into_view_if_needed()
    # auto-label, with the in-kernel explainer, a feature it has words for: for some (dense punctuation
    # above all) it answers nothing, which the page says ("No label made") and this step does not check
    from mistudio_widgets.core.configs import LabelConfig
    from mistudio_widgets.features import feature_detail, latest_extraction
    from mistudio_widgets.features.lm_explainer import LocalChat, explain

    chat, ext = LocalChat(default_ws), latest_extraction(default_ws, extracted_sae)
    order = np.argsort(-cols["frequency"], kind="stable")[1:16].tolist()  # the busiest has a manual label
    speaks = next(f for f in order if explain(chat, feature_detail(default_ws, ext, f), LabelConfig())[0])
    fb.get_by_test_id("fb-sort").select_option("index")
    fb.get_by_test_id("fb-filter").fill(str(speaks))
    fb.locator(f'[data-testid="feature-row"][data-index="{speaks}"]').click()
    expect(fb.get_by_test_id("fb-title")).to_contain_text(f"Feature {speaks}")
    panel = fb.get_by_test_id("fb-autolabel")
    # every feature, by statistics, each scored on held-out texts: the list shows the labels above chance
    fb.get_by_test_id("fb-filter").fill("")  # the whole list (a third of the labels verify: not every row)
    panel.get_by_test_id("lb-all").click()
    expect(fb.get_by_test_id("message")).to_contain_text(
        "statistical label(s); held-out score", timeout=300_000
    )
    expect(fb.locator(".lbl:not(.muted)").first).to_be_visible()
    panel.get_by_test_id("lb-backend").select_option("local")
    panel.get_by_test_id("lb-score").uncheck()
    panel.get_by_test_id("lb-open").click()
    expect(fb.get_by_test_id("message")).to_contain_text("1 explainer label(s)", timeout=300_000)
    opened = int(re.search(r"Feature (\d+)", fb.get_by_test_id("fb-title").inner_text()).group(1))
    auto = default_ws.labels(extracted_sae, opened)[0]
    assert auto["method"] == "auto" and auto["model"] == "SmolLM2-135M-Instruct"
    expect(fb.get_by_test_id("fb-label-history")).to_contain_text("SmolLM2-135M-Instruct")
    if os.environ.get("MISTUDIO_SCREENSHOTS"):
        fb.screenshot(path=os.environ["MISTUDIO_SCREENSHOTS"] + "/feature_browser.png")


def test_steering_pane_in_lab(page, lab, default_ws, extracted_sae):
    from mistudio_widgets.features import feature_columns

    peak = float(feature_columns(default_ws, extracted_sae)["max"][3])
    preset = f"lab-preset-{uuid.uuid4().hex[:6]}"
    later = _later_sae(default_ws)  # an SAE at a later layer: the steer is also read there
    try:
        _steer_in_lab(page, lab, default_ws, extracted_sae, peak, preset)
    finally:
        default_ws.delete(later, cascade=True, force=True)


def _later_sae(ws) -> str:
    from mistudio_widgets.core.configs import TrainConfig
    from mistudio_widgets.train.training import train

    return train(
        ws,
        TrainConfig(
            steps=4, batch_tokens=512, chunk_sequences=16, eval_sequences=4, eval_every=0,
            checkpoint_every=0, log_every=2, expansion_factor=1, k=8, hook="blocks.9.hook_resid_post",
            name=ws.unique_name("run", "lab-later-sae"),
        ),
    ).sae_id  # fmt: skip


def _steer_in_lab(page, lab, default_ws, extracted_sae, peak, preset) -> None:
    open_and_run(
        page,
        lab,
        "steer.ipynb",
        [
            SETUP,
            "from mistudio_widgets.widgets import SteeringPane\npane = SteeringPane(ws, "
            f"sae={extracted_sae!r})\npane",
        ],
    )
    pane = page.get_by_test_id("steering-pane")
    expect(pane.get_by_test_id("st-sae")).to_have_value(extracted_sae)
    # find a feature by index and add it: its slider spans ten times its largest activation
    pane.get_by_test_id("st-search").fill("3")
    pane.get_by_test_id("st-search").press("Enter")
    pane.get_by_test_id("st-found").locator('button[data-index="3"]').click()
    slider = pane.locator('[data-testid="st-slider"][data-index="3"]')
    expect(slider).to_have_attribute("max", re.compile(r"^\d"))
    assert abs(float(slider.get_attribute("max")) - max(10 * peak, 1)) < 1e-3
    pane.get_by_test_id("st-wide").check()  # Neuronpedia's range
    expect(slider).to_have_attribute("max", "300")
    # generate: both continuations come back, the changed tokens are marked and the metrics shown
    generate_in_pane(pane, "Tell me about the king.", max_tokens=8, strength=300, index=3)
    expect(pane.get_by_test_id("st-metrics")).to_contain_text("KL")
    expect(pane.get_by_test_id("st-metrics")).to_contain_text("perplexity")
    expect(pane.get_by_test_id("st-metrics")).to_contain_text("feature 3 activation")
    expect(pane.get_by_test_id("st-similarity")).to_contain_text(
        re.compile(r"meaning kept \(cosine\)\s*-?[01]\.\d{3}")
    )
    # read at a later layer through the SAE there: the steered feature's counterpart, and what rose most
    counterpart = re.compile(r"L\d+ resid_post: feature \d+")
    expect(pane.get_by_test_id("st-downstream").first).to_contain_text(counterpart)
    expect(pane.get_by_test_id("st-downstream-raised")).to_contain_text("raised most")
    expect(pane.get_by_test_id("st-unsteered").locator(".stok").first).to_be_visible()
    expect(pane.get_by_test_id("st-steered").locator(".stok.added").first).to_be_visible()
    if os.environ.get("MISTUDIO_SCREENSHOTS"):
        pane.screenshot(path=os.environ["MISTUDIO_SCREENSHOTS"] + "/steering_lab.png")
    # a long generation streams tokens in and stops when asked
    pane.get_by_test_id("st-max-tokens").fill("400")
    pane.get_by_test_id("st-max-tokens").dispatch_event("change")
    pane.get_by_test_id("st-generate").click()
    expect(pane.get_by_test_id("st-unsteered").locator(".stok").nth(2)).to_be_attached()  # streaming
    pane.get_by_test_id("st-stop").click()
    expect(pane.get_by_test_id("st-metrics")).to_contain_text("stopped")
    assert pane.get_by_test_id("st-unsteered").locator(".stok").count() < 400
    # a sweep over two strengths fills a table; a preset is kept in the workspace
    pane.get_by_test_id("st-max-tokens").fill("4")
    pane.get_by_test_id("st-max-tokens").dispatch_event("change")
    pane.get_by_test_id("st-sweep-strengths").fill("0, 300")
    pane.get_by_test_id("st-sweep").click()
    expect(pane.get_by_test_id("st-sweep-table").locator("tr")).to_have_count(3)
    pane.get_by_test_id("st-preset-name").fill(preset)
    pane.get_by_role("button", name="Save preset").click()
    expect(pane.get_by_test_id("st-presets").locator(f'option[value="{preset}"]')).to_be_attached()
    saved = default_ws.find(preset, "steering_preset")
    assert saved is not None and saved.meta["config"]["features"] == [[3, 300.0]]
    assert saved.meta["config"]["max_tokens"] == 4


def test_sae_library_imports_exports_and_compares_in_lab(page, lab, default_ws, extracted_sae):
    from mistudio_widgets.share.exporting import export_saelens

    folder = lab["root"] / f"shared-{uuid.uuid4().hex[:6]}"
    export_saelens(default_ws, extracted_sae, folder)
    name = f"lab-import-{uuid.uuid4().hex[:6]}"
    open_and_run(
        page, lab, "library.ipynb", [SETUP, "from mistudio_widgets.widgets import SAELibrary\nSAELibrary(ws)"]
    )
    lib = page.get_by_test_id("sae-library")
    expect(lib.locator("tbody tr").first).to_be_visible()
    # import a SAELens folder from the page
    lib.get_by_test_id("lib-import-source").fill(str(folder))
    lib.get_by_test_id("lib-import-name").fill(name)
    lib.get_by_test_id("lib-import").click()
    expect(lib.get_by_test_id("message")).to_contain_text(f"Imported {name}: saelens")
    row = lib.locator(f'tr[data-name="{name}"]')
    expect(row).to_contain_text("imported (saelens)")
    imported = default_ws.get(name, "sae").id
    # the hook column keeps the part that tells resid_post from mlp_out, and a row's actions sit on one line
    hook = default_ws.get(imported).meta["hook"]
    layer, kind = hook.split(".")[1], hook.split(".hook_")[1]
    expect(row.locator("td").nth(2)).to_have_text(f"L{layer} {kind}")
    expect(row.locator("td").nth(2)).to_have_attribute("title", hook)
    tops = row.locator("td.actions button, td.actions select").evaluate_all(
        "(els) => els.map((e) => Math.round(e.getBoundingClientRect().top))"
    )
    assert len(tops) == 3 and max(tops) - min(tops) <= 4, tops
    # export the extracted SAE for Neuronpedia
    out = lab["root"] / f"np-{uuid.uuid4().hex[:6]}"
    lib.get_by_test_id("lib-export-sae").select_option(extracted_sae)
    lib.get_by_test_id("lib-export-format").select_option("neuronpedia")
    lib.get_by_test_id("lib-export-out").fill(str(out))
    lib.get_by_test_id("lib-export").click()
    expect(lib.get_by_test_id("lib-exported")).to_contain_text(str(out))
    assert (
        json.loads((out / "manifest.json").read_text())["features"]
        == default_ws.get(extracted_sae).meta["d_sae"]
    )
    # share it: the hub layout, the yaml entry and the Neuronpedia files, here without uploading
    lib.get_by_test_id("lib-share-sae").select_option(extracted_sae)
    lib.get_by_test_id("lib-share-repo").fill("alice/lab-share")
    lib.get_by_test_id("lib-share-upload").uncheck()
    lib.get_by_test_id("lib-share").click()
    expect(lib.get_by_test_id("lib-shared")).to_contain_text("not uploaded (not asked to upload)")
    expect(lib.get_by_test_id("lib-shared")).to_contain_text("sae_weights.safetensors")
    # compare the SAE with its imported copy: every feature matches itself
    lib.get_by_test_id("lib-compare-a").select_option(extracted_sae)
    lib.get_by_test_id("lib-compare-b").select_option(imported)
    lib.get_by_test_id("lib-compare").click()
    expect(lib.get_by_test_id("lib-comparison-sentence")).to_contain_text(
        re.compile(r"matches feature (\d+) of .* at 1\.00")
    )
    expect(lib.get_by_test_id("lib-comparison")).to_contain_text("mean cosine")
    expect(lib.get_by_test_id("lib-comparison").locator("svg.histogram rect.binbar").first).to_be_attached()
    if os.environ.get("MISTUDIO_SCREENSHOTS"):
        lib.screenshot(path=os.environ["MISTUDIO_SCREENSHOTS"] + "/sae_library.png")


HOSTILE = [
    "<img src=x onerror=\"window.__pwned='img'\"> The king is here.",
    '<script>window.__pwned="script"</script> A calm sentence about the sea.',
    '<svg onload="window.__pwned=\'svg\'"></svg> "><b>bold</b> & <a '
    'href="javascript:window.__pwned=1">link</a>',
    '<iframe srcdoc="<script>parent.__pwned=1</script>"></iframe> Why are you shouting?',
]


def test_untrusted_text_is_shown_as_text_never_run(page, lab, default_ws, extracted_sae, tmp_path):
    """Markup in dataset text, in the extraction's examples drawn from it, in labels and in prompts is
    shown as text in every widget: nothing it holds is run or rendered."""
    from mistudio_widgets.core.configs import DatasetConfig, ExtractConfig
    from mistudio_widgets.data.datasets import add_dataset
    from mistudio_widgets.features import extract, feature_columns
    from mistudio_widgets.share.exporting import export_saelens
    from mistudio_widgets.share.importing import import_sae

    src = tmp_path / "hostile.jsonl"
    src.write_text("\n".join(json.dumps({"text": t}) for t in HOSTILE * 20))
    ds = add_dataset(
        default_ws, DatasetConfig(source=str(src), name=default_ws.unique_name("dataset", "hostile"))
    )
    export_saelens(default_ws, extracted_sae, tmp_path / "copy")  # a copy of the SAE, extracted on that text
    sae = import_sae(default_ws, tmp_path / "copy", name=default_ws.unique_name("sae", "hostile-copy")).id
    extract(default_ws, sae, ExtractConfig(dataset=ds.name, tokens=1024, top_k=5, batch_size=4))
    busiest = int(feature_columns(default_ws, sae)["frequency"].argmax())
    default_ws.add_label(sae, busiest, HOSTILE[0])
    open_and_run(
        page,
        lab,
        "hostile.ipynb",
        [
            SETUP,
            "from mistudio_widgets.widgets import DatasetPicker, FeatureBrowser, "
            "SteeringPane\nDatasetPicker(ws)",
            f"fb = FeatureBrowser(ws, sae={sae!r})\nfb",
            f"SteeringPane(ws, sae={sae!r})",
        ],
    )
    widgets = page.locator(".jp-OutputArea-output")
    # the dataset's preview
    picker = page.get_by_test_id("dataset-picker")
    picker.locator(f'tr[data-name="{ds.name}"]').click()
    expect(picker.get_by_test_id("ds-preview")).to_contain_text("<script>window.__pwned")
    # the feature's label in the list and its title, and its examples drawn from that text
    fb = page.get_by_test_id("feature-browser")
    fb.get_by_test_id("fb-filter").fill(str(busiest))
    row = fb.locator(f'[data-testid="feature-row"][data-index="{busiest}"]')
    expect(row).to_contain_text("onerror=")
    row.click()
    expect(fb.get_by_test_id("fb-title")).to_contain_text(HOSTILE[0])
    expect(fb.get_by_test_id("fb-examples").locator(".ftok.peak").first).to_be_visible()
    fb.get_by_test_id("fb-example-line").first.click()  # the whole window, as text
    examples = fb.get_by_test_id("fb-examples").text_content()  # the tokens' text, hidden ones too
    assert any(m in examples for m in ("<img", "<script", "<svg", "<iframe", "onerror", "onload")), examples[
        :500
    ]
    # a prompt with markup, steered: the continuations are text too
    pane = page.get_by_test_id("steering-pane")
    pane.get_by_test_id("st-search").fill(str(busiest))
    pane.get_by_test_id("st-search").press("Enter")
    pane.get_by_test_id("st-found").locator(f'button[data-index="{busiest}"]').click()
    generate_in_pane(pane, HOSTILE[1] + " " + HOSTILE[3], max_tokens=4, strength=5, index=busiest)
    expect(pane.get_by_test_id("st-metrics")).to_contain_text("KL")
    # nothing ran, and no element came from the text
    assert page.evaluate("window.__pwned") is None
    assert page.evaluate(
        "() => [...document.querySelectorAll('iframe')].every(f => !f.contentWindow || "
        "f.contentWindow.__pwned === undefined)"
    )
    assert widgets.locator("img, script, svg[onload], iframe, a[href^='javascript']").count() == 0


def test_a_shouting_feature_is_found_and_steered_from_the_page(page, lab, default_ws, demo_sae):
    """The run of show through the widgets: the prompt tester's contrast with the ordinary case, then the
    SteeringPane finds the feature by contrast, picks its strength automatically by the named fluency rule
    (twice: the button is usable again) and steers with it, the result judged by the same rule."""
    from mistudio_widgets.cli.demo import SHOUTS, uppercase_share
    from mistudio_widgets.features import contrast

    found = contrast(default_ws, demo_sae, SHOUTS)
    best, steer_with = found["features"][0]["index"], found["steer_with"]
    open_and_run(
        page,
        lab,
        "shout.ipynb",
        [
            SETUP,
            "from mistudio_widgets.widgets import FeatureBrowser, SteeringPane\nFeatureBrowser(ws, "
            f"sae={demo_sae!r})",
            f"SteeringPane(ws, sae={demo_sae!r})",
        ],
    )
    fb = page.get_by_test_id("feature-browser")
    fb.get_by_test_id("fb-prompt").fill("\n".join(SHOUTS))
    fb.get_by_test_id("fb-ordinary").check()
    fb.get_by_test_id("fb-prompt-go").click()
    table = fb.get_by_test_id("fb-contrast-table")
    expect(table.locator("tr[data-index]").first).to_have_attribute("data-index", str(best))
    # the alignment column, and the row to steer with marked (the best aligned, not always the top scorer)
    expect(table.get_by_test_id("fb-alignment")).to_have_count(len(found["features"]))
    marked = table.locator("tr.best")
    expect(marked).to_have_count(1)
    expect(marked).to_have_attribute("data-index", str(steer_with))
    expect(marked.get_by_test_id("fb-steer-best")).to_be_visible()
    expect(fb.get_by_test_id("fb-contrast-tokens")).to_contain_text("contrast")
    pane = page.get_by_test_id("steering-pane")
    pane.scroll_into_view_if_needed()
    pane.get_by_test_id("st-contrast-text").fill("\n".join(SHOUTS))
    pane.get_by_test_id("st-contrast-go").click()
    star = pane.get_by_test_id("st-found").locator("button", has_text="★")
    expect(star).to_be_visible()
    index = star.get_attribute("data-index")
    star.click()
    # Auto on a prompt the fluency rule was not tuned on, twice in a row
    set_field(pane.get_by_test_id("st-prompt"), "How do I plant tomatoes?")
    auto = pane.locator(f'[data-testid="st-auto-go"][data-index="{index}"]')
    for attempt in range(2):
        auto.click()
        expect(auto).to_be_disabled()  # the sweep runs (it takes tens of seconds)
        expect(auto).to_be_enabled(timeout=600_000)  # and the button is usable again after it
        error = pane.get_by_test_id("error").inner_text().strip()
        assert not error, error
        expect(pane.get_by_test_id("st-auto-table").locator("tr")).not_to_have_count(1)
        # the rule is named; the chosen text is shown and its row passes the rule as shown
        expect(pane.get_by_test_id("st-auto-rule")).to_contain_text(
            "lower-cased and read by the unsteered model"
        )
        if pane.get_by_test_id("st-auto-chosen").count():
            expect(pane.get_by_test_id("st-auto-table").locator("tr.chosen td").nth(5)).to_have_text("yes")
            expect(pane.get_by_test_id("st-relative")).to_contain_text("of the residual norm")
    set_field(pane.get_by_test_id("st-max-tokens"), 30)
    pane.get_by_test_id("st-generate").click()
    expect(pane.get_by_test_id("st-metrics")).to_contain_text("KL", timeout=600_000)
    verdict = pane.get_by_test_id("st-fluency").inner_text()
    print("Generate at the automatic strength:", verdict)  # the same rule, in the same words
    assert "fluent" in verdict and pane.get_by_test_id("st-fluency").get_attribute("title").startswith(
        "fluent:"
    )
    expect(auto).to_be_enabled()
    steered = "".join(pane.get_by_test_id("st-steered").locator(".stok").all_inner_texts())
    unsteered = "".join(pane.get_by_test_id("st-unsteered").locator(".stok").all_inner_texts())
    assert uppercase_share(unsteered) < 0.2, unsteered
    assert steered != unsteered  # the feature changed the text
    if os.environ.get("MISTUDIO_SCREENSHOTS"):
        pane.screenshot(path=os.environ["MISTUDIO_SCREENSHOTS"] + "/steering_shout.png")
        fb.screenshot(path=os.environ["MISTUDIO_SCREENSHOTS"] + "/contrast.png")
