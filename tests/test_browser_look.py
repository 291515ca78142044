"""What a user sees, in a real browser: the Studio in JupyterLab and in the Voila dashboard, in the light
and the dark theme, at 1280 px. Every plotly chart draws its data, nothing overflows sideways, charts
take the theme's background, the steering texts stay readable, nothing is fetched from outside the
server, and the harvest shows progress right after Start. One screenshot per tab, front end and theme
is kept under test-artifacts/screenshots/ for a person to look at."""

from __future__ import annotations

import contextlib
import json
import re
import time
import uuid
from pathlib import Path

import pytest
from browser import VOILA_READY, free_port, jupyter_env, lab_command, server, voila_command, write_notebook
from conftest import ARTIFACTS
from playwright.sync_api import expect

pytestmark = pytest.mark.browser
expect.set_options(timeout=90_000)
REPO = Path(__file__).resolve().parent.parent
SHOTS = ARTIFACTS / "screenshots"
TABS = ("Datasets", "Models", "SAEs", "Training", "Features", "Steering")
WIDTH = 1280
LAB_THEMES = {"light": "JupyterLab Light", "dark": "JupyterLab Dark"}

# plotly charts that are on screen and draw nothing: the names of their subplot titles (or "?")
EMPTY_CHARTS_JS = """() => {
  const out = [];
  for (const plot of document.querySelectorAll('.js-plotly-plot')) {
    if (!plot.offsetParent) continue;   // hidden (another tab, or the one-run Pareto view)
    const drawn = plot.querySelectorAll('.scatterlayer path.js-line[d*="L"], .scatterlayer path.point, '
      + '.barlayer .bars path, .scatterlayer .js-fill').length;
    const titles = Array.from(plot.querySelectorAll('.gtitle, .annotation-text')).map(t => t.textContent);
    if (!drawn) out.push(titles.join(' | ') || '?');
  }
  return out;
}"""

# elements wider than their box (sideways scroll): widget roots and the SAE library's table
OVERFLOW_JS = """() => Array.from(document.querySelectorAll('.mistudio, [data-testid=lib-table-box]'))
  .filter(e => e.offsetParent && e.scrollWidth > e.clientWidth + 1)
  .map(e => {
    const right = e.getBoundingClientRect().right;
    const wide = Array.from(e.querySelectorAll('*')).filter(d => d.getBoundingClientRect().right > right + 1)
      .slice(0, 3).map(d => `${d.tagName.toLowerCase()}.${d.getAttribute('class') || ''}`);
    return `${e.className || e.dataset.testid}: ${e.scrollWidth} > ${e.clientWidth} (${wide.join(', ')})`;
  })"""

# words cut across two lines inside a table cell ("Docum|ents"): a word whose glyphs lie on two line boxes
WORD_BREAK_JS = """() => {
  const bad = [];
  for (const cell of document.querySelectorAll('.mistudio td, .mistudio th')) {
    if (!cell.offsetParent) continue;
    const walk = document.createTreeWalker(cell, NodeFilter.SHOW_TEXT);
    for (let n = walk.nextNode(); n; n = walk.nextNode()) {
      for (const m of n.data.matchAll(/[^\\s\\-\\/]+/g)) {  // the parts between break opportunities
        const r = document.createRange();
        r.setStart(n, m.index);
        r.setEnd(n, m.index + m[0].length);
        const rects = [...r.getClientRects()].filter((x) => x.width > 0);
        const tops = new Set(rects.map((x) => Math.round(x.top)));
        if (tops.size > 1) bad.push(m[0]);
      }
    }
  }
  return bad.slice(0, 10);
}"""

# each visible chart's paper colour against the page background behind it
BACKGROUNDS_JS = """() => {
  const opaque = c => c && c !== 'transparent' && !/rgba\\(.*,\\s*0\\)$/.test(c);
  const behind = n => {
    for (; n && n.nodeType === 1; n = n.parentElement) {
      const c = getComputedStyle(n).backgroundColor;
      if (opaque(c)) return c;
    }
    return 'rgb(255, 255, 255)';
  };
  return Array.from(document.querySelectorAll('.js-plotly-plot')).filter(p => p.offsetParent).map(p => {
    const svg = p.querySelector('.main-svg');
    return { chart: svg ? getComputedStyle(svg).backgroundColor : '', page: behind(p.parentElement) };
  });
}"""


def luminance(colour: str) -> float:
    r, g, b = (float(v) for v in re.findall(r"[\d.]+", colour)[:3])
    return (0.2126 * r + 0.7152 * g + 0.0722 * b) / 255


@pytest.fixture(scope="module")
def look_run(default_ws, extraction):
    """A finished run newer than any other (the monitor opens the newest), with a metric every step,
    and an extracted SAE for the Features and Steering tabs."""
    from mistudio_widgets.core.configs import TrainConfig
    from mistudio_widgets.train.training import train

    res = train(
        default_ws,
        TrainConfig(
            steps=8,
            batch_tokens=256,
            chunk_sequences=24,
            eval_sequences=4,
            eval_every=4,
            checkpoint_every=0,
            log_every=1,
            expansion_factor=2,
            k=8,
            name=default_ws.unique_name("run", "look"),
        ),
    )
    return res.run_id


class Outside:
    """Requests the page tried to send off the machine (each one aborted), and console lines."""

    def __init__(self, page):
        self.urls: list[str] = []
        self.console: list[str] = []

        def route(r):
            host = r.request.url.split("/")[2].split(":")[0]
            if host in ("127.0.0.1", "localhost", "[::1]") or r.request.url.startswith("data:"):
                r.continue_()
            else:
                self.urls.append(r.request.url)
                r.abort()

        page.unroute("**/*")
        page.route("**/*", route)
        page.on("console", lambda m: self.console.append(m.text))

    @contextlib.contextmanager
    def reported(self):
        """On a failure inside the block, print the page's last console lines for the test report."""
        try:
            yield
        except BaseException:
            print("--- the page's last console lines ---", *self.console[-40:], sep="\n")
            raise


def open_studio_in_lab(page, default_ws, tmp_path, theme: str):
    root = tmp_path / "lab"
    root.mkdir()
    env = jupyter_env(root / ".jupyter", default_ws.root)
    themes = root / ".jupyter" / "settings" / "@jupyterlab" / "apputils-extension"
    themes.mkdir(parents=True, exist_ok=True)
    (themes / "themes.jupyterlab-settings").write_text(json.dumps({"theme": LAB_THEMES[theme]}))
    write_notebook(
        root / "studio.ipynb",
        [
            "import mistudio_widgets as ms\nfrom mistudio_widgets.widgets import Studio\n"
            "ws = ms.open_workspace()\nfrom mistudio_widgets.data.models import load_model, resolve_model\n"
            "_ = load_model(ws, resolve_model(ws))  # as after the Models tab's Load: the model is in memory",
            "studio = Studio(ws)\nstudio",
        ],
    )
    port, token = free_port(), uuid.uuid4().hex
    base = f"http://127.0.0.1:{port}"
    srv = server(lab_command(root, port, token), env, f"{base}/api/status?token={token}", root / "lab.log")
    return srv, f"{base}/lab/workspaces/{uuid.uuid4().hex[:8]}/tree/studio.ipynb?reset&token={token}"


@contextlib.contextmanager
def studio_in_lab(page, default_ws, tmp_path, theme: str):
    """JupyterLab serving a Studio notebook in ``theme``; the page opens it and runs it."""
    srv, url = open_studio_in_lab(page, default_ws, tmp_path, theme)
    with srv:
        page.goto(url)
        expect(page.get_by_text("Python 3 (ipykernel) | Idle")).to_be_visible()
        page.get_by_text("Run", exact=True).first.click()
        page.get_by_text("Run All Cells", exact=True).click()
        expect(page.get_by_test_id("dataset-picker")).to_be_visible()
        yield


def open_studio_in_voila(default_ws, tmp_path, theme: str):
    port = free_port()
    env = {
        **jupyter_env(tmp_path / ".jupyter", default_ws.root),
        "JUPYTER_CONFIG_PATH": str(REPO / "jupyter-config"),
        "JUPYTER_PATH": str(REPO / "share" / "jupyter"),
    }
    cmd = voila_command(REPO / "dashboards" / "studio.ipynb", port) + [f"--theme={theme}"]
    base = f"http://127.0.0.1:{port}/"
    return server(cmd, env, base + VOILA_READY, tmp_path / "voila.log"), base


def wait_until_empty(page, js: str, what: str, timeout: float = 30.0):
    end, last = time.time() + timeout, None
    while time.time() < end:
        last = page.evaluate(js)
        if not last:
            return
        page.wait_for_timeout(500)
    raise AssertionError(f"{what}: {last}")


def charts_follow_the_theme(page, tab: str, theme: str) -> None:
    """The plotly charts on screen take the page's background (the theme travels page -> kernel ->
    figure; allow it a moment)."""
    end = time.time() + 30
    while True:
        bgs = page.evaluate(BACKGROUNDS_JS)
        ok = bgs and all(b["chart"] == b["page"] for b in bgs)
        if ok or time.time() > end:
            break
        page.wait_for_timeout(500)
    assert ok, f"{tab}: chart backgrounds do not match the page: {bgs}"
    for b in bgs:
        assert (luminance(b["chart"]) < 0.35) == (theme == "dark"), (tab, theme, b)


def check_tab(page, frontend: str, theme: str, tab: str) -> None:
    page.get_by_role("tab", name=tab).click()
    page.wait_for_timeout(800)
    if tab == "Features":  # open the busiest feature and its co-activations, as a user would look at one
        fb = page.get_by_test_id("feature-browser")
        fb.get_by_test_id("fb-sort").select_option("frequency")
        fb.get_by_test_id("feature-row").first.click()
        expect(fb.get_by_test_id("fb-title")).to_contain_text("Feature")
        expect(fb.get_by_test_id("fb-density").locator("rect.binbar").first).to_be_attached()
        fb.get_by_test_id("fb-coact").click()
        expect(fb.get_by_test_id("coact-heatmap")).to_be_visible()
        # the grid holds the feature and every neighbour the page lists (it held 9 of 10)
        n = fb.get_by_test_id("fb-neighbours").locator("button").count()
        expect(fb.get_by_test_id("coact-col")).to_have_count(n + 1)
    wait_until_empty(page, EMPTY_CHARTS_JS, f"{tab}: charts on screen that draw no data")
    wait_until_empty(page, OVERFLOW_JS, f"{tab}: content wider than its box at {WIDTH} px")
    wait_until_empty(page, WORD_BREAK_JS, f"{tab}: table cells that break a word at {WIDTH} px")
    if tab in ("Training", "Features"):
        charts_follow_the_theme(page, tab, theme)
    SHOTS.mkdir(parents=True, exist_ok=True)
    shoot(page, SHOTS / f"{frontend}-{theme}-{tab.lower()}.png")


def shoot(page, path: Path) -> None:
    """The whole Studio in one picture: Lab and Voila scroll inside a panel, so the window is made tall
    enough to hold it for the shot (same width), then set back."""
    size = page.viewport_size
    studio = page.locator(".mistudio-studio")
    height = page.evaluate("(e) => e.scrollHeight", studio.element_handle())
    page.set_viewport_size({"width": size["width"], "height": min(max(size["height"], height + 400), 6000)})
    page.wait_for_timeout(500)
    studio.scroll_into_view_if_needed()
    page.screenshot(path=str(path))
    page.set_viewport_size(size)


def search_as_typed(pane, query: str) -> None:
    """Type a feature search; it is sent as typed. One CI run got no answer to it in 90 s (the cause
    unknown, not seen here): when none shows in 45 s the search is sent again with Enter, as a user would,
    and the retry is written to test-artifacts/look-retries.txt and the report."""
    box = pane.get_by_test_id("st-search")
    box.fill(query)
    answer = pane.get_by_test_id("st-found").locator("button").first
    try:
        expect(answer).to_be_visible(timeout=45_000)
    except AssertionError:
        note = f"{time.strftime('%Y-%m-%d %H:%M:%S')} no answer to the search {query!r} in 45 s: sent again\n"
        with open(ARTIFACTS / "look-retries.txt", "a") as fh:
            fh.write(note)
        print(note)
        box.press("Enter")
        expect(answer).to_be_visible()


def steer_and_check_readable(page, shot: Path) -> None:
    page.get_by_role("tab", name="Steering").click()
    pane = page.get_by_test_id("steering-pane")
    search_as_typed(pane, "1")  # a feature number
    expect(pane.get_by_test_id("st-found")).to_contain_text("that number")
    pane.get_by_test_id("st-found").locator("button").first.click()
    expect(pane.get_by_test_id("st-found").locator("button")).to_have_count(0)  # the results go once added
    pane.get_by_test_id("st-prompt").fill("Tell me about the sea.")
    pane.get_by_test_id("st-prompt").dispatch_event("change")
    pane.get_by_test_id("st-max-tokens").fill("8")
    pane.get_by_test_id("st-max-tokens").dispatch_event("change")
    pane.locator("[data-testid=st-strength]").first.fill("80")
    pane.locator("[data-testid=st-strength]").first.dispatch_event("change")
    pane.get_by_test_id("st-generate").click()
    expect(pane.get_by_test_id("st-metrics")).to_contain_text("KL")
    # both boxes start with the prompt; no token is struck through
    for side in ("st-unsteered", "st-steered"):
        expect(pane.get_by_test_id(side).locator(".st-prompt-echo")).to_contain_text("Tell me about the sea.")
    struck = page.evaluate(
        "() => Array.from(document.querySelectorAll('.stok')).filter(s => "
        "getComputedStyle(s).textDecorationLine.includes('line-through')).length"
    )
    assert struck == 0
    shoot(page, shot)


@pytest.mark.parametrize("theme", ["light", "dark"])
def test_studio_in_lab_looks_right(browser, default_ws, tmp_path, look_run, theme):
    context = browser.new_context(viewport={"width": WIDTH, "height": 900})
    page = context.new_page()
    outside = Outside(page)
    with studio_in_lab(page, default_ws, tmp_path, theme), outside.reported():
        assert page.evaluate("document.body.dataset.jpThemeLight") == ("false" if theme == "dark" else "true")
        for tab in TABS:
            check_tab(page, "lab", theme, tab)
        steer_and_check_readable(page, SHOTS / f"lab-{theme}-steering-generated.png")
    context.close()
    assert not outside.urls, f"the page asked for outside addresses: {outside.urls[:5]}"


@pytest.mark.parametrize("theme", ["light", "dark"])
def test_studio_in_voila_looks_right(browser, default_ws, tmp_path, look_run, theme):
    context = browser.new_context(viewport={"width": WIDTH, "height": 900})
    page = context.new_page()
    outside = Outside(page)
    srv, url = open_studio_in_voila(default_ws, tmp_path, theme)
    with srv, outside.reported():
        page.goto(url)
        expect(page.get_by_test_id("dataset-picker")).to_be_visible()
        assert page.evaluate("document.body.dataset.jpThemeLight") == ("false" if theme == "dark" else "true")
        for tab in TABS:
            check_tab(page, "voila", theme, tab)
        steer_and_check_readable(page, SHOTS / f"voila-{theme}-steering-generated.png")
    context.close()
    assert not outside.urls, f"the page asked for outside addresses (Font Awesome?): {outside.urls[:5]}"
    # the widget manager and every extension came up (Voila 0.5's core is JupyterLab 4.2.5; the
    # extensions' "Unsatisfied version ... required ^4.6.2" notes are webpack falling back to it, harmless)
    broken = [c for c in outside.console if "failed to activate" in c or "No version of module" in c]
    assert not broken, broken[:3]


def test_every_chart_hears_the_kernel_on_a_slow_page(browser, default_ws, tmp_path, look_run):
    """anywidget drops every kernel message to a model whose front-end module took over 2 s to load, and
    Voila creates all models at once. With the page's CPU slowed 10x while it loads (a busy laptop), each
    plotly chart still takes the dark theme the kernel sends when its tab is shown (with plotly's own
    5 MB module per figure, the Features chart stayed white)."""
    context = browser.new_context(viewport={"width": WIDTH, "height": 900})
    page = context.new_page()
    cdp = context.new_cdp_session(page)
    srv, url = open_studio_in_voila(default_ws, tmp_path, "dark")
    with srv:
        cdp.send("Emulation.setCPUThrottlingRate", {"rate": 10})
        page.goto(url, timeout=120_000)
        expect(page.get_by_test_id("dataset-picker")).to_be_visible(timeout=120_000)
        cdp.send("Emulation.setCPUThrottlingRate", {"rate": 1})
        for tab in ("Training", "Features"):
            page.get_by_role("tab", name=tab).click()
            charts_follow_the_theme(page, tab, "dark")
    context.close()


def test_the_harvest_shows_progress_right_after_start(browser, default_ws, tmp_path, look_run):
    """Start a training from the Studio's form: while it harvests, before its first step, the monitor
    shows the harvest's token count and an ETA (no longer "0 / N" until the harvest ends); then stop it.
    How long after Start the progress showed is written to test-artifacts/harvest-progress.txt. (Last in
    this file: the stopped run, with no metrics yet, becomes the newest run other monitors would open.)"""
    context = browser.new_context(viewport={"width": WIDTH, "height": 900})
    page = context.new_page()
    with studio_in_lab(page, default_ws, tmp_path, "light"):
        start_and_watch_the_harvest(page)
    context.close()


def start_and_watch_the_harvest(page) -> None:
    page.get_by_role("tab", name="Training").click()
    conf = page.get_by_test_id("training-configurator")
    conf.get_by_text("Advanced settings").click()
    for name, value in {
        "steps": 400,
        "batch_tokens": 512,
        "expansion_factor": 2,
        "chunk_sequences": 256,
        "eval_sequences": 4,
        "eval_every": 0,
        "checkpoint_every": 0,
    }.items():
        box = conf.locator(f'[data-field="{name}"]')
        box.fill(str(value))
        box.dispatch_event("change")
    expect(conf.get_by_test_id("train-start")).to_be_enabled()
    started = time.time()
    conf.get_by_test_id("train-start").click()
    monitor = page.get_by_test_id("training-monitor")
    harvesting = re.compile(r"harvesting activations [\d,]+ / [\d,]+")
    stage = monitor.locator("tr[data-run] [data-testid=run-stage]", has_text=harvesting)
    expect(stage.first).to_be_visible()
    seen_after = time.time() - started
    name = stage.first.locator("xpath=ancestor::tr[1]").get_attribute("data-run")
    row = monitor.locator(f'tr[data-run="{name}"]')  # the table is redrawn every second: find it by name
    # the 256-sequence chunk (32,768 tokens) takes tens of seconds: the run is still before step 1
    expect(row.get_by_test_id("run-step")).to_have_text("0 / 400")
    expect(row.get_by_test_id("run-eta")).to_have_text(re.compile(r"\d+(\.\d)? (s|min)"))
    (ARTIFACTS / "harvest-progress.txt").write_text(
        f"harvest progress shown {seen_after:.1f} s after Start\n"
    )
    row.get_by_test_id("run-stop").click()
    expect(row.get_by_test_id("run-status")).to_have_text("interrupted")
