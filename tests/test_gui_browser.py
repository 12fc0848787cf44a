"""The GUI in real headless Chromium (Playwright): convert a model end to end, watch progress, download and run the
.rknn, see the validator's message for a bad value, draw YOLOX boxes, and refuse a cross-site request.

Screenshots land in test-artifacts/gui/ (gitignored). Skips when /usr/bin/chromium or playwright is missing."""

from __future__ import annotations

import http.server
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the GUI needs fastapi (pip install fastapi uvicorn)")
pytest.importorskip("uvicorn", reason="the GUI needs uvicorn (pip install fastapi uvicorn)")

from test_gui_api import reference_output, tiny_image_model  # noqa: E402

from openrknn.config import make_config  # noqa: E402
from openrknn.errors import ConfigError  # noqa: E402
from openrknn.gui.app import GuiSettings  # noqa: E402
from openrknn.gui.server import BackgroundServer  # noqa: E402

pytestmark = pytest.mark.slow  # a real browser; each test drives the GUI for a second or more
ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts" / "gui"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync", "--disable-quic"]
VIEWPORT = {"width": 1360, "height": 900}
TIMEOUT_MS = 90_000


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found (apt-get install chromium); the browser tests drive the system Chromium")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright's Python package is not installed "
                                   "(pip install playwright; no `playwright install` needed)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def gui(tmp_path_factory):
    server = BackgroundServer(GuiSettings(port=0, workdir=tmp_path_factory.mktemp("gui_browser_work")))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def page(browser, gui):
    context = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
    context.set_default_timeout(TIMEOUT_MS)
    pg = context.new_page()
    problems: list = []
    pg.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    pg.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    pg.goto(gui.url + "/")
    pg.wait_for_selector("#config-status[data-state=ok]")  # the page validated its defaults through the API
    yield pg
    context.close()
    # a failed request the test provoked on purpose logs a console error; anything else is a bug in the page
    unexpected = [p for p in problems if "status of 4" not in p]
    assert not unexpected, unexpected


def wait_until(pg, expression: str, timeout_ms: int = TIMEOUT_MS) -> None:
    """Poll ``expression`` through page.evaluate until it is true. Not wait_for_function: its polling evaluates a
    string in the page, which the GUI's Content-Security-Policy (script-src 'self') refuses whenever the condition
    is not already true at the first check (a loaded machine)."""
    deadline = time.monotonic() + timeout_ms / 1000
    while not pg.evaluate(expression):
        assert time.monotonic() < deadline, f"timed out waiting for {expression}"
        pg.wait_for_timeout(50)


def screenshot(pg, name: str) -> Path:
    """The whole page at full height (a tall viewport, so sticky bars stay where they belong)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    height = pg.evaluate("document.documentElement.scrollHeight")
    pg.set_viewport_size({"width": VIEWPORT["width"], "height": height})
    path = ARTIFACTS / name
    pg.screenshot(path=str(path))
    pg.set_viewport_size(VIEWPORT)
    assert path.stat().st_size > 10_000
    return path


def open_model(pg, path: Path) -> None:
    pg.set_input_files("#model-file", str(path))
    pg.wait_for_selector(f"#model-name:text-is('{path.name}')")


def record_progress(pg) -> None:
    """Remember every text the progress label shows, to prove progress was streamed, not just the end state."""
    pg.evaluate("""() => {
        window.__progress = [];
        const el = document.querySelector('#progress-text');
        new MutationObserver(() => window.__progress.push(el.textContent))
            .observe(el, {childList: true, characterData: true, subtree: true});
    }""")


def test_convert_end_to_end_in_chromium(page, tmp_path):
    from openrknn.package import read_package
    from openrknn.runtime.simulator import Simulator

    model = tiny_image_model(tmp_path / "tiny_conv.onnx", hw=32)
    open_model(page, model)
    assert "[1, 3, 32, 32]" in page.inner_text("#model-inputs")
    assert page.input_value("#output-name") == "tiny_conv.rknn"
    page.fill("#cfg-mean_values", "10 100 200")
    page.fill("#cfg-std_values", "2 4 8")
    page.wait_for_selector("#config-status[data-state=ok]")
    assert "rk1808" in page.inner_text("#config-status")
    record_progress(page)
    page.click("#build-btn")
    page.wait_for_selector("#progress-text:text-matches('^Done')")

    seen = page.evaluate("window.__progress")
    assert any(s.startswith("Build") for s in seen) and seen[-1].startswith("Done"), seen
    assert page.locator("#stages li.done").count() == 6
    log_text = page.inner_text("#build-log")
    assert "exported tiny_conv.rknn" in log_text and "build done" in log_text
    assert page.inner_text("#result-name") == "tiny_conv.rknn"
    assert "[1, 32, 32, 3] uint8 NHWC" in page.inner_text("#result-inputs")
    assert page.inner_text("#result-inputs tbody td:nth-child(4)") == "float"  # nothing quantized

    with page.expect_download() as download:
        page.click("#download-link")
    saved = tmp_path / "downloaded.rknn"
    download.value.save_as(str(saved))
    assert download.value.suggested_filename == "tiny_conv.rknn"
    pkg = read_package(saved)
    pixels = np.random.default_rng(5).integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)
    out = Simulator(pkg.model_bytes, pkg.metadata, threads=1).run([pixels])[0]
    np.testing.assert_allclose(out, reference_output(model, pixels, [10, 100, 200], [2, 4, 8]), rtol=1e-4,
                               atol=1e-4)

    import cv2

    image = tmp_path / "gradient.png"
    cv2.imwrite(str(image), np.tile(np.arange(0, 256, 4, dtype=np.uint8)[None, :, None], (48, 1, 3)))
    page.set_input_files("#infer-file", str(image))
    page.click("#infer-btn")
    page.wait_for_selector("#infer-result:not([hidden])")
    assert "[1, 4, 32, 32]" in page.inner_text("#out-table")
    assert page.is_hidden("#infer-figure")  # not a detector: no drawing
    page.wait_for_selector("#layers-table tr[data-name='conv']")
    assert page.inner_text("#layers-table tr[data-name='conv'] .prec") == "float"
    screenshot(page, "convert_end_to_end.png")


def test_bad_config_value_shows_the_validators_message(page, tmp_path):
    open_model(page, tiny_image_model(tmp_path / "tiny.onnx"))
    page.fill("#cfg-optimization_level", "7")
    error = page.locator(".field[data-key=optimization_level] .field-error")
    error.wait_for(state="visible")
    with pytest.raises(ConfigError) as expected:
        make_config(optimization_level=7)
    assert error.inner_text() == str(expected.value)
    assert page.get_attribute("#config-status", "data-state") == "error"
    assert page.is_disabled("#build-btn")

    page.fill("#cfg-optimization_level", "3")
    page.wait_for_selector("#config-status[data-state=ok]")
    assert page.is_hidden(".field[data-key=optimization_level] .field-error")
    assert page.is_enabled("#build-btn")

    # the dtype list follows the target's NPU generation
    page.select_option("#cfg-target_platform", "rk3588")
    enabled = page.eval_on_selector_all("#cfg-quantized_dtype option:not([disabled])", "os => os.map(o => o.value)")
    assert enabled == ["", "w8a8", "w8a16", "w16a16i", "float16"]
    page.wait_for_selector("#config-status[data-state=ok]:has-text('w8a8')")

    # a value only the model can refute (2 means for 3 channels) is flagged as typed, against the loaded model
    page.fill("#cfg-mean_values", "1 2")
    mean_error = page.locator(".field[data-key=mean_values] .field-error")
    mean_error.wait_for(state="visible")
    assert "3 channels" in mean_error.inner_text()
    assert page.get_attribute("#config-status", "data-state") == "error" and page.is_disabled("#build-btn")
    screenshot(page, "bad_config_value.png")
    page.fill("#cfg-mean_values", "1 2 3")
    page.wait_for_selector("#config-status[data-state=ok]")
    assert page.is_hidden(".field[data-key=mean_values] .field-error") and page.is_enabled("#build-btn")


def test_quantized_build_with_uploaded_calibration_and_layer_accuracy(page, tmp_path):
    import cv2

    model = tiny_image_model(tmp_path / "tiny_q.onnx", hw=24)
    rng = np.random.default_rng(7)
    images = []
    for i in range(4):
        images.append(tmp_path / f"calib_{i}.png")
        cv2.imwrite(str(images[-1]), rng.integers(0, 256, (24, 24, 3), dtype=np.uint8))
    open_model(page, model)
    assert not page.is_checked("#do-quantization")
    page.set_input_files("#dataset-files", [str(p) for p in images])
    page.wait_for_selector("#dataset-count:text-is('4 samples')")
    assert page.is_checked("#do-quantization")  # picking calibration data turns quantization on
    page.fill("#cfg-std_values", "255")
    page.select_option("#cfg-quantized_algorithm", "kl_divergence")
    page.wait_for_selector("#config-status[data-state=ok]:has-text('kl_divergence')")
    page.click("#build-btn")
    page.wait_for_selector("#progress-text:text-matches('^Done')")
    assert "asymmetric_quantized-u8 · kl_divergence · per-layer" in page.inner_text("#result-meta")
    assert "calibration: 4 file(s)" in page.inner_text("#build-log")
    # std 255 folds into the conv: the pixels themselves (in NCHW) are the first point, each on its own level
    assert page.inner_text("#result-inputs tbody td:nth-child(4)").endswith(
        ": uint8, scale 1, zero point 0; levels span [0, 255]")
    page.wait_for_selector("#layers-table tr[data-name='conv'] .prec.quant")
    assert page.inner_text("#layers-table tr[data-name='relu'] .prec") == "uint8"
    assert page.is_disabled("#accuracy-btn")  # measured on an inference image: none yet

    page.set_input_files("#infer-file", str(images[0]))
    page.click("#infer-btn")
    page.wait_for_selector("#infer-result:not([hidden])")
    page.wait_for_selector("#accuracy-btn:not([disabled])")
    page.click("#accuracy-btn")
    page.wait_for_selector("#layers-note:has-text('Accuracy measured on calib_0.png')")
    cosine = float(page.inner_text("#layers-table tr[data-name='relu'] .cos .mono"))
    assert 0.9 < cosine <= 1.0
    reason = page.inner_text("#layers-note")
    hybrid_disabled = page.is_disabled("#layers-table tr[data-name='relu'] input[type=checkbox]")
    assert hybrid_disabled == ("Keep-float toggles:" in reason)  # toggles are off exactly when the note says why
    screenshot(page, "quantized_layers.png")


def test_yolox_nano_inference_draws_boxes(page, real_data):
    model = real_data("models/yolox_nano_coco.onnx")
    image = real_data("images/misc/dog.jpg")
    labels = real_data("coco_80_labels.txt").read_text().split("\n")
    page.fill("#model-path", str(model))
    page.click("#model-path-form button")
    page.wait_for_selector("#model-name:text-is('yolox_nano_coco.onnx')")
    assert "[1, 3549, 85]" in page.inner_text("#model-outputs")
    page.click("#build-btn")
    page.wait_for_selector("#progress-text:text-matches('^Done')")
    page.set_input_files("#infer-file", str(image))
    page.select_option("#infer-feed", "bgr")  # this export takes BGR 0..255 (tests/data/README.md)
    page.fill("#infer-names", ", ".join(n.strip() for n in labels if n.strip()))
    page.click("#infer-btn")
    page.wait_for_selector("#infer-figure:not([hidden])")
    wait_until(page, "document.querySelector('#infer-image').naturalWidth > 0")
    assert page.evaluate("document.querySelector('#infer-image').naturalWidth") == 768
    classes = page.eval_on_selector_all("#det-table tbody tr td:first-child", "tds => tds.map(t => t.textContent)")
    assert {"dog", "bicycle"} <= set(classes), classes
    assert "flat layout, 80 classes" in page.inner_text("#infer-caption")
    screenshot(page, "yolox_inference.png")


class _OtherLocalApp(http.server.BaseHTTPRequestHandler):
    """Some other web app on this machine: it serves a page whose script targets the GUI."""

    def do_GET(self):
        body = b"<!doctype html><title>another local app</title>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_cross_site_post_from_another_page_is_refused(browser, gui, tmp_path):
    """Another local web page (same site, other port, so the session cookie goes along) fires a 'simple' POST
    (no CORS preflight) at the GUI: the Origin check refuses it. Chromium itself already blocks public pages from
    reaching loopback, so the attacker worth testing is a local one."""
    model = tiny_image_model(tmp_path / "target.onnx")
    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _OtherLocalApp)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    context = browser.new_context()
    try:
        gui_page = context.new_page()
        gui_page.goto(gui.url + "/")  # the session cookie now exists in this browser
        evil = context.new_page()
        evil.goto(f"http://127.0.0.1:{other.server_address[1]}/")
        with evil.expect_response(lambda r: "/api/model/path" in r.url) as response:
            evil.evaluate("""([url, path]) => fetch(url, {method: 'POST', mode: 'no-cors', credentials: 'include',
                headers: {'Content-Type': 'text/plain'}, body: JSON.stringify({path})}).catch(() => null)""",
                          [gui.url + "/api/model/path", str(model)])
        assert response.value.status == 403
        state = gui_page.evaluate("() => fetch('/api/state').then(r => r.json())")
        assert state["model"] is None
        # the same request from the GUI page itself goes through
        ok = gui_page.evaluate("""(path) => fetch('/api/model/path', {method: 'POST', headers: {'Content-Type':
            'application/json'}, body: JSON.stringify({path})}).then(r => r.status)""", str(model))
        assert ok == 200
    finally:
        context.close()
        other.shutdown()
        other.server_close()

