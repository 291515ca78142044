"""Widget logic on the kernel side: page messages drive the engine, errors come back as traits."""

from __future__ import annotations

import json

from mistudio_widgets.widgets import DatasetPicker, ModelPicker, Studio, SystemMonitor


def page(widget, action, **args):
    """What the page's model.send({action, args}) delivers."""
    widget._on_page_msg(widget, {"action": action, "args": args}, [])


def test_dataset_picker_add_and_tokenize_from_page_messages(default_ws, tmp_path):
    src = tmp_path / "yell.jsonl"
    src.write_text(
        "\n".join(json.dumps({"text": t}) for t in ["WHY ARE YOU SHOUTING?", "calm words here"] * 40)
    )
    w = DatasetPicker(default_ws)
    name = default_ws.unique_name("dataset", "widget-yell")
    page(w, "add", source=str(src), name=name, samples="50")
    w.wait(120)
    assert w.error == {} and w.status == "idle"
    art = default_ws.get(name, "dataset")
    assert w.selected == art.id and art.meta["stats"]["documents"] == 50
    assert any("SHOUTING" in p["text"] for p in w.preview)
    model = default_ws.get("SmolLM2-135M-Instruct", "model")
    page(w, "tokenize", dataset=art.id, model=model.id, context_size="32", min_length="2", prepend_bos=True)
    w.wait(120)
    assert w.error == {} and w.stats["context_size"] == 32 and w.stats["tokens"] > 0
    assert w.progress["stage"] == "tokenize" and w.progress["finished"]
    row = next(d for d in w.datasets if d["id"] == art.id)
    assert row["tokenizations"][0]["context_size"] == 32
    page(w, "delete", id=art.id)
    assert default_ws.find(name, "dataset") is None
    assert all(d["id"] != art.id for d in w.datasets)


def test_errors_reach_the_widget(default_ws, tmp_path):
    w = DatasetPicker(default_ws)
    page(w, "add", source=str(tmp_path / "missing"))
    w.wait(60)
    assert "No file or folder" in w.error["problem"] and w.error["fix"]
    page(w, "tokenize", dataset=w.selected, model="")
    w.wait(60)
    assert "No model chosen" in w.error["problem"]
    page(w, "no-such-action")
    assert "Unknown action" in w.error["problem"]


def test_model_picker_info_hooks_and_load(default_ws):
    w = ModelPicker(default_ws)
    model = default_ws.get("SmolLM2-135M-Instruct", "model")
    page(w, "select", id=model.id)
    assert w.info["layers"] == 30 and w.info["parameters"] == 134_515_008
    assert len(w.hooks) == 180 and w.hook in w.hooks
    page(w, "load", id=model.id, dtype="float32", quantization="none", device="cpu")
    w.wait(120)
    assert w.error == {} and w.loaded["device"] == "cpu" and w.model.name == model.name
    assert "cpu float32" in next(m for m in w.models if m["id"] == model.id)["loaded"].split(", ")
    page(w, "load", id=model.id, device="cuda")
    w.wait(60)
    assert "CUDA" in w.error["problem"]


def test_system_monitor_samples_only_when_visible(default_ws):
    import time

    w = SystemMonitor(default_ws, interval=0.2)
    snap = w.snapshot
    assert len(snap["cpu"]) >= 1 and snap["ram"]["total"] > 0 and snap["disk"]["total"] > 0
    assert snap["gpu_state"] in ("ok", "none") and (snap["gpus"] or snap["gpu_message"])
    t0 = w.snapshot["time"]
    time.sleep(0.6)
    assert w.snapshot["time"] == t0  # hidden: no sampling
    w.visible = True
    time.sleep(0.8)
    assert w.snapshot["time"] > t0
    w.close()


def test_studio_tabs(default_ws):
    s = Studio(default_ws)
    assert [s.tabs.get_title(i) for i in range(6)] == [
        "Datasets",
        "Models",
        "SAEs",
        "Training",
        "Features",
        "Steering",
    ]
    assert s.tabs.children[4].children[0] is s.features and s.tabs.children[5] is s.steering
    assert s.trainer.check["problems"] == [] and s.trainer.monitor is s.monitor
    s.library.action_open(id="x", target="Steering")
    assert s.tabs.selected_index == 5
    s.close()


def test_monitor_reattaches_from_the_catalog_and_library_manages_saes(default_ws):
    from mistudio_widgets.core.configs import TrainConfig
    from mistudio_widgets.train.training import train
    from mistudio_widgets.widgets import SAELibrary, TrainingMonitor

    res = train(
        default_ws,
        TrainConfig(
            steps=3,
            batch_tokens=256,
            chunk_sequences=24,
            eval_sequences=4,
            eval_every=0,
            log_every=1,
            checkpoint_every=0,
            expansion_factor=2,
            k=8,
            name=default_ws.unique_name("run", "widget-run"),
        ),
    )
    mon = TrainingMonitor(
        default_ws, runs=[res.run_id]
    )  # as after a kernel restart: only the catalog is read
    loss = next(tr for tr in mon.figure.data if list(tr.meta) == [res.run_id, "loss", "train"])
    assert list(loss.x) == [1, 2, 3] and all(v > 0 for v in loss.y)
    # the x axis in tokens or in seconds of training (harvests included), as recorded at each step
    rows = default_ws.metrics(res.run_id, "train")
    mon.x_axis.value = "tokens"
    loss = next(tr for tr in mon.figure.data if list(tr.meta) == [res.run_id, "loss", "train"])
    assert list(loss.x) == [256, 512, 768] == [r["tokens"] for r in rows]
    mon.x_axis.value = "elapsed_s"
    loss = next(tr for tr in mon.figure.data if list(tr.meta) == [res.run_id, "loss", "train"])
    assert list(loss.x) == [r["elapsed_s"] for r in rows] and 0 < loss.x[0] < loss.x[1] < loss.x[2]
    assert mon.figure.layout.xaxis.title.text == "seconds" or any(
        ax.title.text == "seconds" for ax in mon.figure.select_xaxes()
    )
    mon.x_axis.value = "step"
    # a top-k SAE's L0 is k at every step: no L0 panel, no one-bar histogram
    assert {tr.meta[1] for tr in mon.figure.data} == {p.metric for p in mon.panels}
    assert not {"l0", "l0_histogram"} & {p.metric for p in mon.panels}
    # a page that connects only now (Voila) gets every trace with its points, not the empty start
    from mistudio_widgets.widgets.plots import drawable

    assert drawable(mon.figure) and len(mon.figure._widget_data) == len(mon.figure.data)
    assert [len(w["x"]) for w in mon.figure._widget_data][:2] == [3, 3]
    # the page's theme reaches the charts (and their synced state)
    mon.controls.theme = {"dark": True, "background": "rgb(17, 17, 17)", "foreground": "#ddd", "grid": "#444"}
    assert mon.figure.layout.paper_bgcolor == "rgb(17, 17, 17)" == mon.figure._widget_layout["paper_bgcolor"]
    assert mon.pareto.layout.paper_bgcolor == "rgb(17, 17, 17)"
    mon.controls.theme = {"dark": True, "background": "not-a-colour", "width": "wide"}  # a broken page
    assert mon.figure.layout.paper_bgcolor == "#ffffff"  # light, not a traceback in the kernel
    row = next(r for r in mon.controls.runs if r["id"] == res.run_id)
    assert row["status"] == "done" and row["step"] == 3 and row["sae"] == res.sae_id
    import torch

    assert (
        ("GPU 0" in mon.controls.device)
        if torch.cuda.is_available()
        else mon.controls.device.startswith("CPU: ")
    )
    mon.controls.action_detach(id=res.run_id)
    assert not [tr for tr in mon.figure.data if tr.meta[0] == res.run_id]
    mon.close()
    lib = SAELibrary(default_ws)
    item = next(x for x in lib.saes if x["id"] == res.sae_id)
    assert item["architecture"] == "topk" and item["explained_variance"] == res.metrics["explained_variance"]
    new_name = default_ws.unique_name("sae", "renamed-sae")
    lib.action_rename(id=res.sae_id, name=new_name)
    assert default_ws.get(res.sae_id).name == new_name and any(x["name"] == new_name for x in lib.saes)
    lib.action_delete(id=res.sae_id)
    assert default_ws.find(res.sae_id) is None and all(x["id"] != res.sae_id for x in lib.saes)


def test_feature_browser_and_map_from_the_kernel(default_ws):
    import numpy as np

    from mistudio_widgets.core.configs import TrainConfig
    from mistudio_widgets.features import feature_columns
    from mistudio_widgets.train.training import train
    from mistudio_widgets.widgets import FeatureBrowser, FeatureMap

    res = train(
        default_ws,
        TrainConfig(
            steps=2,
            batch_tokens=256,
            chunk_sequences=8,
            eval_sequences=4,
            eval_every=0,
            checkpoint_every=0,
            log_every=1,
            expansion_factor=1,
            k=8,
            hook="blocks.2.hook_resid_post",
            name=default_ws.unique_name("run", "widget-features"),
        ),
    )
    fb = FeatureBrowser(default_ws, sae=res.sae_id)
    assert fb.sae == res.sae_id and fb.extraction == {} and fb.columns == b""
    fb.extract(tokens=512, top_k=3, batch_size=4)  # blocking, as from a cell
    cols = np.frombuffer(fb.columns, dtype="<f4").reshape(4, -1)
    assert fb.n_features == 576 and cols.shape == (4, 576) and np.isnan(cols[3]).all()  # impact: not measured
    np.testing.assert_array_equal(cols[0], feature_columns(default_ws, res.sae_id)["frequency"])
    busiest = int(cols[0].argmax())
    d = fb.show(busiest)
    assert d["index"] == busiest and d["examples"] and fb.error == {}
    fb.label(busiest, "newline-ish")
    assert fb.labels[str(busiest)] == "newline-ish" and fb.detail["label"] == "newline-ish"
    fb.label(busiest, "   ")
    assert "empty" in fb.error["problem"]
    fb.show(10**6)
    assert "out of range" in fb.error["problem"]
    p = fb.test_prompt("WHY ARE YOU SHOUTING")
    assert p["tokens"] and p["features"] and p["text"] == "WHY ARE YOU SHOUTING"
    fb.action_coact(features=[busiest, 1, 2])
    assert len(fb.coact["correlation"]) == 3
    fm = FeatureMap(fb)
    assert len(fm.figure.data[0].x) == 576 and fm.shown_layout == "pca"
    # UMAP: computed in a thread while the PCA map stays; then drawn, and features that write alike (decoder
    # cosine) sit closer than on the PCA map
    import time

    from mistudio_widgets import features as fx

    ext = fb.extraction["id"]
    fm.layout_picker.value = "umap"
    assert fm.shown_layout == "pca" and "computing the UMAP map" in fm.status.value
    deadline = time.monotonic() + 300
    while fm.shown_layout != "umap" and time.monotonic() < deadline:
        time.sleep(0.5)
    assert fm.shown_layout == "umap" and "UMAP" in fm.figure.layout.title.text
    assert len(fm.figure.data[0].x) == 576 and fm.status.value == ""

    def neighbour_distance(layout: str) -> float:
        m = fx.feature_map(default_ws, fb.sae, layout)
        xy = np.stack([m["x"], m["y"]], 1)
        xy = (xy - xy.mean(0)) / xy.std(0)
        nb = [
            (i, n["index"])
            for i in range(40)
            for n in fx.feature_detail(default_ws, ext, i)["neighbours"][:3]
        ]
        return float(np.mean([np.linalg.norm(xy[a] - xy[b]) for a, b in nb]))

    assert neighbour_distance("umap") < neighbour_distance("pca")
    # coloured by label group: the labelled feature's group, the unlabelled in one grey group
    fm.colour_picker.value = "label"
    names = [tr.name for tr in fm.figure.data]
    assert names[-1].startswith("unlabelled") and sum(len(tr.x) for tr in fm.figure.data) == 576
    fm.colour_picker.value = "frequency"  # one trace holding every feature again
    fm._clicked(fm.figure.data[0], type("Points", (), {"point_inds": [7]})(), None)  # as plotly calls it
    assert fb.detail["index"] == 7
    fb.show(busiest)
    # without worked examples: the small in-kernel model sometimes copies one verbatim, which is then no label
    fb.autolabel(
        features=[busiest],
        backend="local",
        score=False,
        max_tokens=8,
        examples=2,
        holdout_tokens=2048,
        few_shot=False,
    )
    methods = [r["method"] for r in fb.detail["labels"]]
    assert fb.error == {} and methods[-2:] == ["statistical", "auto"], methods
    # unscored labels title nothing; the person's label still does
    assert fb.labels[str(busiest)] == fb.detail["label"] == "newline-ish"
    assert "titled by a label above chance" in fb.label_note
    assert fb.label_settings["score"] is False and "api_key" not in fb.label_settings
    fb.action_steer(index=7)
    assert fb.steer_request == {"sae": res.sae_id, "index": 7}
    fb.close()


def test_steering_pane_from_the_kernel_and_steer_with_this(default_ws, small_sae, extraction):
    from mistudio_widgets.features import feature_columns
    from mistudio_widgets.widgets import SteeringPane, Studio

    f = int(feature_columns(default_ws, extraction)["frequency"].argmax())
    pane = SteeringPane(default_ws, sae=small_sae)
    pane.add(f)
    row = pane.chosen[0]
    assert row["index"] == f and row["max"] > 0 and row["strength"] == round(4 * row["max"], 3)
    pane.action_strength(index=f, strength=12 * row["max"])
    res = pane.generate("Tell me about the king.", max_tokens=8)
    assert pane.error == {} and res["metrics"]["kl_mean"] > 0 and pane.steered and pane.unsteered
    assert "".join(pane.steered) != "".join(pane.unsteered)
    pane.action_search(query=str(f))
    assert pane.found[0]["index"] == f
    pane.add(10**7)
    assert "out of range" in pane.error["problem"]
    pane.action_save_preset(name="kernel-preset")
    pane.action_remove(index=f)
    assert pane.chosen == []
    pane.action_load_preset(name="kernel-preset")
    assert [c["index"] for c in pane.chosen] == [f] and pane.prompt == "Tell me about the king."
    pane.close()
    s = Studio(default_ws)
    s.features.select(small_sae)
    s.features.action_steer(index=f)  # "Steer with this" in the browser
    assert s.tabs.selected_index == 5 and s.steering.sae == default_ws.get(small_sae).id
    assert [c["index"] for c in s.steering.chosen] == [f]
    s.close()


def test_an_sae_with_a_metric_not_measured_keeps_the_library_json(default_ws, small_sae):
    """A NaN metric (not measured) reaches the page as "–": NaN is not JSON, and a state holding one
    failed to serialize, so the page dropped the whole SAE list (a red warning in Voila)."""
    import json

    from mistudio_widgets.widgets import SAELibrary

    art = default_ws.get(small_sae)
    before = dict(art.meta.get("metrics") or {})
    default_ws.update_meta(art.id, metrics={**before, "dead_fraction": float("nan")})
    try:
        lib = SAELibrary(default_ws)
        json.dumps(lib.get_state()["saes"], allow_nan=False)
        row = next(r for r in lib.saes if r["id"] == art.id)
        assert row["dead_fraction"] is None and row["l0"] == before.get("l0")
        lib.close()
    finally:
        default_ws.update_meta(art.id, metrics=before)


def test_smoothing_follows_a_falling_loss_to_its_end():
    """The monitor's smoothing does not lag: a straight line comes back unchanged (a moving or exponential
    average ends above a falling loss), and noise around a falling trend is smoothed towards the trend."""
    import numpy as np

    from mistudio_widgets.widgets.training_charts import smooth

    line = [100.0 - 2 * i for i in range(40)]
    assert np.allclose(smooth(line, 0.9), line)
    noisy = [100.0 - i + (4 if i % 2 else -4) for i in range(60)]
    out = smooth(noisy, 0.8)
    trend = [100.0 - i for i in range(60)]
    assert max(abs(a - b) for a, b in zip(out, trend)) < 2.5 < max(abs(a - b) for a, b in zip(noisy, trend))
    assert smooth(noisy, 0.0) == noisy and smooth([3.0, 1.0], 0.9) == [3.0, 1.0]


def test_the_monitor_says_a_new_run_is_harvesting_and_fades_the_runs_not_training(default_ws):
    """While a new run harvests activations before its first step, the charts show only older runs' curves:
    those are faded and dotted, and a note says the new run is harvesting (they were taken for it)."""
    import time

    from mistudio_widgets.core.configs import TrainConfig
    from mistudio_widgets.train.training import train
    from mistudio_widgets.widgets import TrainingConfigurator, TrainingMonitor

    small = dict(
        steps=3,
        batch_tokens=256,
        chunk_sequences=24,
        eval_sequences=4,
        eval_every=0,
        log_every=1,
        checkpoint_every=0,
        expansion_factor=2,
        k=8,
    )
    old = train(default_ws, TrainConfig(**small, name=default_ws.unique_name("run", "monitor-old")))
    mon = TrainingMonitor(default_ws, runs=[old.run_id])
    conf = TrainingConfigurator(default_ws, monitor=mon)
    conf.values = {**conf.values, **small, "name": default_ws.unique_name("run", "monitor-new")}
    job = conf.start()
    job.pause()  # held at its first harvest batch: no step yet
    deadline = time.monotonic() + 120
    while not mon._live() and time.monotonic() < deadline:
        time.sleep(0.2)
    try:
        mon._draw_charts()
        notes = [a.text for a in mon.figure.layout.annotations if a.name == "harvest"]
        assert len(notes) == 1 and "harvesting activations" in notes[0], notes
        loss = next(tr for tr in mon.figure.data if list(tr.meta) == [old.run_id, "loss", "train"])
        assert loss.opacity == 0.35 and loss.line.dash == "dot"
    finally:
        job.resume()
        job.wait(timeout=300)
    mon.poll()
    mon._draw_charts()
    assert not [a for a in mon.figure.layout.annotations if a.name == "harvest"]
    loss = next(tr for tr in mon.figure.data if list(tr.meta) == [old.run_id, "loss", "train"])
    assert loss.opacity == 1.0 and loss.line.dash is None
    mon.close()
