"""The GUI server without a browser: guards (Origin, Host, upload limits, path traversal, session isolation), the
config form against make_config, the build event stream, and the CLI entry points. Runs a real uvicorn server."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterable, Optional
from urllib.parse import quote, urlsplit

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

pytest.importorskip("fastapi", reason="the GUI needs fastapi (pip install fastapi uvicorn)")
pytest.importorskip("uvicorn", reason="the GUI needs uvicorn (pip install fastapi uvicorn)")

from openrknn.config import KNOWN_KEYS, make_config  # noqa: E402
from openrknn.errors import ConfigError  # noqa: E402
from openrknn.gui.app import GuiSettings  # noqa: E402
from openrknn.gui.forms import config_schema, form_to_kwargs, validate_form  # noqa: E402
from openrknn.gui.infer import yolox_layout  # noqa: E402
from openrknn.gui.pipeline import parse_input_size  # noqa: E402
from openrknn.gui.server import BackgroundServer, free_port  # noqa: E402
from openrknn.gui.sessions import RequestRefused, contained_path, sanitize_filename  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODEL_LIMIT = 2 * 1024 * 1024
IMAGE_LIMIT = 256 * 1024


def tiny_image_model(path: Path, hw: int = 16, seed: int = 3) -> Path:
    """x [1,3,hw,hw] -> 3x3 conv (pad 1) -> Relu -> y [1,4,hw,hw]: an image model that builds in well under a second."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((4, 3, 3, 3)) * 0.3).astype(np.float32)
    b = (rng.standard_normal(4) * 0.1).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["y"], name="relu")],
        "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, hw, hw])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, hw, hw])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def reference_output(model_path: Path, pixels_nhwc: np.ndarray, mean, std) -> np.ndarray:
    """The float model on the documented contract: (pixel - mean) / std per channel, NCHW."""
    import onnxruntime as ort

    x = ((pixels_nhwc.astype(np.float32) - np.float32(mean)) / np.float32(std)).transpose(0, 3, 1, 2)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(model_path), sess_options=opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": np.ascontiguousarray(x)})[0]


class Client:
    """http.client with the page's cookie and Origin; raw paths are sent as given (no dot-segment cleanup)."""

    def __init__(self, base: str):
        parts = urlsplit(base)
        self.host, self.port = parts.hostname, parts.port
        self.origin = f"http://{self.host}:{self.port}"
        self.cookie: Optional[str] = None

    def request(self, method: str, path: str, body=None, headers: Optional[dict] = None, origin: Optional[str] = "",
                chunked: bool = False):
        conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        h = {"Host": f"{self.host}:{self.port}"}
        if origin == "":
            origin = self.origin
        if origin is not None and method != "GET":
            h["Origin"] = origin
        if self.cookie:
            h["Cookie"] = self.cookie
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            h["Content-Type"] = "application/json"
        h.update(headers or {})
        conn.request(method, path, body=body, headers=h, encode_chunked=chunked)
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data

    def json(self, method: str, path: str, body=None, **kw):
        status, _, data = self.request(method, path, body, **kw)
        return status, (json.loads(data) if data else None)

    def open_session(self) -> "Client":
        status, headers, _ = self.request("GET", "/")
        assert status == 200
        self.cookie = headers["set-cookie"].split(";")[0]
        return self

    @property
    def token(self) -> str:
        return self.cookie.split("=", 1)[1]

    def events(self, job_id: str, timeout: float = 120) -> list:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        conn.request("GET", f"/api/jobs/{job_id}/events", headers={"Cookie": self.cookie})
        resp = conn.getresponse()
        assert resp.status == 200 and resp.getheader("content-type").startswith("text/event-stream")
        events = []
        for block in resp.read().decode().split("\n\n"):
            data = [ln[6:] for ln in block.splitlines() if ln.startswith("data: ")]
            if data:
                events.append(json.loads(data[0]))
        conn.close()
        return events


@pytest.fixture(scope="module")
def gui(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("gui_work")
    server = BackgroundServer(GuiSettings(port=0, workdir=workdir, max_upload_bytes=MODEL_LIMIT,
                                          max_image_bytes=IMAGE_LIMIT))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def client(gui) -> Client:
    return Client(gui.url).open_session()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return tiny_image_model(tmp_path_factory.mktemp("gui_models") / "tiny.onnx")


def session_of(gui, client: Client):
    return gui.app.state.store.get(client.token)


def upload(client: Client, kind: str, name: str, data: bytes, **kw):
    return client.json("POST", f"/api/{kind}/upload?filename={quote(name)}", data,
                       headers={"Content-Type": "application/octet-stream"}, **kw)


def build_and_wait(client: Client, body: dict) -> tuple:
    status, r = client.json("POST", "/api/build", body)
    assert status == 200, r
    events = client.events(r["job_id"])
    return r["job_id"], events


# ---------------------------------------------------------------- pure helpers


@pytest.mark.parametrize("name, expected", [
    ("model.onnx", "model.onnx"), ("../../evil.onnx", "evil.onnx"), ("..\\..\\win.ONNX", "win.onnx"),
    ("my model (1).pt", "my_model_1.pt"), ("/etc/passwd.rknn", "passwd.rknn"), ("ünï cödé.onnx", "uni_code.onnx"),
    (" .hidden.onnx", "hidden.onnx"),
])
def test_sanitize_filename_keeps_a_safe_base_name(name, expected):
    assert sanitize_filename(name, (".onnx", ".pt", ".rknn")) == expected


def test_sanitize_filename_keeps_non_latin_names_distinct():
    a, b = sanitize_filename("模型.onnx", (".onnx",)), sanitize_filename("眼睛.onnx", (".onnx",))
    assert a != b and a.startswith("upload-") and a.endswith(".onnx")


@pytest.mark.parametrize("name", ["evil.exe", ".bashrc", "....", "model", "a.onnx.sh", ".onnx"])
def test_sanitize_filename_refuses_other_types(name):
    with pytest.raises(RequestRefused) as e:
        sanitize_filename(name, (".onnx", ".pt"))
    assert e.value.status == 400


def test_contained_path_refuses_escapes(tmp_path):
    root = tmp_path / "s" / "outputs"
    root.mkdir(parents=True)
    (root / "ok.rknn").write_bytes(b"x")
    (tmp_path / "secret.txt").write_text("secret")
    os.symlink(tmp_path / "secret.txt", root / "link.rknn")
    assert contained_path(root, "ok.rknn") == (root / "ok.rknn").resolve()
    for bad in ("../../secret.txt", "/etc/passwd", "link.rknn", ".", "", "sub/../../x", "a\x00b"):
        with pytest.raises(RequestRefused) as e:
            contained_path(root, bad)
        assert e.value.status in (400, 403)


def test_schema_has_every_config_option_with_its_default():
    schema = config_schema()
    assert [f["key"] for f in schema["fields"]] == list(KNOWN_KEYS)
    by_key = {f["key"]: f for f in schema["fields"]}
    assert by_key["target_platform"]["default"] == "rk1808"
    assert by_key["optimization_level"]["default"] == 3
    assert {o["value"] for o in by_key["target_platform"]["options"]} >= {"rk1808", "rk3588", "rv1106"}
    assert set(schema["dtypes"]["rknpu2"]) == {"w8a8", "w8a16", "w16a16i", "float16"}


def test_form_values_become_config_kwargs():
    kw = form_to_kwargs({"mean_values": "123.675, 116.28 103.53", "std_values": "58 57 57#1", "optimization_level": "2",
                         "quant_img_RGB2BGR": True, "output_optimize": False, "reorder_channel": " 2 1 0 ",
                         "quantized_dtype": "", "auto_hybrid_cos_thresh": "0.95"})
    assert kw == {"mean_values": [123.675, 116.28, 103.53], "std_values": [[58.0, 57.0, 57.0], [1.0]],
                  "optimization_level": 2, "quant_img_RGB2BGR": True, "output_optimize": 0,
                  "reorder_channel": "2 1 0", "auto_hybrid_cos_thresh": 0.95}


@pytest.mark.parametrize("form, kwargs", [
    ({"optimization_level": "7"}, {"optimization_level": 7}),
    ({"optimization_level": "two"}, {"optimization_level": "two"}),
    ({"mean_values": "abc"}, {"mean_values": "abc"}),
    ({"std_values": "1 0 1"}, {"std_values": [1.0, 0.0, 1.0]}),
    ({"target_platform": "rk3588", "quantized_dtype": "asymmetric_quantized-u8"},
     {"target_platform": "rk3588", "quantized_dtype": "asymmetric_quantized-u8"}),
    ({"reorder_channel": "0 1 1"}, {"reorder_channel": "0 1 1"}),
])
def test_form_errors_are_make_configs_own(form, kwargs):
    with pytest.raises(ConfigError) as e:
        make_config(**kwargs)
    result = validate_form(form)
    assert result["ok"] is False
    assert result["message"] == str(e.value) and result["key"] == e.value.key


def test_parse_input_size():
    assert parse_input_size("3,224,224") == [[3, 224, 224]]
    assert parse_input_size("1 3 32 32 # 1 1 8 8") == [[1, 3, 32, 32], [1, 1, 8, 8]]
    assert parse_input_size("  ") is None
    with pytest.raises(ConfigError):
        parse_input_size("3,a,224")


def test_yolox_layout_is_recognised_from_shapes_only():
    inp = [{"name": "images", "shape": [1, 416, 416, 3]}]
    assert yolox_layout(inp, [{"shape": [1, 3549, 85]}]) == {"layout": "flat", "num_classes": 80}
    maps = [{"shape": [1, 8, 52, 52]}, {"shape": [1, 8, 26, 26]}, {"shape": [1, 8, 13, 13]}]
    assert yolox_layout(inp, maps) == {"layout": "maps", "num_classes": 3}
    assert yolox_layout(inp, [{"shape": [1, 1000]}]) is None
    assert yolox_layout(inp, [{"shape": [1, 3548, 85]}]) is None
    assert yolox_layout(inp, maps[:2]) is None


# ---------------------------------------------------------------- guards


def test_page_sets_a_strict_session_cookie_and_security_headers(gui):
    c = Client(gui.url)
    status, headers, body = c.request("GET", "/")
    assert status == 200
    cookie = headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    assert "script-src 'self'" in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY"
    page = body.decode()
    for key in KNOWN_KEYS:  # every config() option has a form control
        assert f'name="{key}"' in page


def test_cross_site_and_originless_posts_are_refused(gui, client, tiny_model):
    for origin in ("http://evil.example", "null", None, f"https://{client.host}:{client.port}",
                   f"http://{client.host}:{client.port + 1}"):
        status, r = client.json("POST", "/api/model/path", {"path": str(tiny_model)}, origin=origin)
        assert status == 403, (origin, r)
        assert "refused" in r["error"]
    assert client.json("GET", "/api/state")[1]["model"] is None  # nothing changed
    status, r = client.json("POST", "/api/model/path", {"path": str(tiny_model)})
    assert status == 200 and r["model"]["name"] == "tiny.onnx"


def test_foreign_host_header_is_refused(gui):
    c = Client(gui.url)
    status, _, body = c.request("GET", "/", headers={"Host": f"attacker.example:{c.port}"})
    assert status == 421
    assert b"not this GUI" in body


def test_download_cannot_leave_the_session_folder(gui, client, tiny_model):
    secret = Path(gui.settings.workdir) / "secret.txt"
    secret.write_text("TOPSECRET")
    outputs = session_of(gui, client).outputs
    os.symlink(secret, outputs / "link.rknn")
    attempts = ["/api/download/../secret.txt", "/api/download/../../secret.txt", "/api/download/..%2F..%2Fsecret.txt",
                "/api/download/%2e%2e/%2e%2e/secret.txt", "/api/download//etc/passwd", "/api/download/link.rknn",
                "/api/download/..%5c..%5csecret.txt", "/api/download/%2Fetc%2Fpasswd"]
    for path in attempts:
        status, _, body = client.request("GET", path)
        assert status in (403, 404), path
        assert b"TOPSECRET" not in body and b"root:" not in body, path
    assert client.request("GET", "/api/download/..%2F..%2Fsecret.txt")[0] == 403


def test_uploads_are_size_limited_while_streaming(gui, client):
    big = b"\0" * (MODEL_LIMIT + 1)
    status, r = upload(client, "model", "big.onnx", big)  # announced by Content-Length: refused before reading
    assert status == 413 and "limit" in r["error"]

    def chunks() -> Iterable[bytes]:
        for _ in range(MODEL_LIMIT // 65536 + 2):
            yield b"\0" * 65536

    status, r = client.json("POST", "/api/model/upload?filename=big.onnx", chunks(), chunked=True,
                            headers={"Content-Type": "application/octet-stream"})
    assert status == 413 and "limit" in r["error"]
    status, r = upload(client, "dataset", "huge.png", b"\0" * (IMAGE_LIMIT + 1))
    assert status == 413
    leftovers = [p.name for p in session_of(gui, client).root.rglob("*") if p.is_file()]
    assert leftovers == []


def test_upload_names_are_sanitized_into_the_session_folder(gui, client, tiny_model):
    status, r = upload(client, "model", "../../../escaped.onnx", tiny_model.read_bytes())
    assert status == 200 and r["model"]["name"] == "escaped.onnx"
    assert (session_of(gui, client).uploads / "escaped.onnx").is_file()
    assert not (Path(gui.settings.workdir).parent / "escaped.onnx").exists()
    assert "path" not in r["model"]  # the page is not told where the session folder is
    status, r = upload(client, "model", "payload.sh", b"#!/bin/sh")
    assert status == 400 and "not accepted" in r["error"]


def test_api_needs_a_session(gui, tiny_model):
    c = Client(gui.url)
    status, r = c.json("POST", "/api/model/path", {"path": str(tiny_model)})
    assert status == 401 and "reload the page" in r["error"]


# ---------------------------------------------------------------- build, events, download


def test_build_streams_progress_and_the_download_runs(gui, client, tiny_model, tmp_path):
    from openrknn.package import read_package
    from openrknn.runtime.simulator import Simulator

    assert upload(client, "model", "tiny.onnx", tiny_model.read_bytes())[0] == 200
    mean, std = [10.0, 100.0, 200.0], [2.0, 4.0, 8.0]
    job_id, events = build_and_wait(client, {"config": {"mean_values": "10 100 200", "std_values": "2,4,8"},
                                             "output_name": "tiny model.rknn"})
    kinds = [e["type"] for e in events]
    stages = [e["name"] for e in events if e["type"] == "stage"]
    assert stages == ["Validate config", "Load model", "Calibration data", "Build", "Export .rknn", "Analyse"]
    assert kinds[-2:] == ["done", "state"] and events[-1]["state"] == "done"
    logs = [e["message"] for e in events if e["type"] == "log"]
    assert any("exported tiny_model.rknn" in m for m in logs) and any("build done" in m for m in logs)
    result = next(e for e in events if e["type"] == "done")["result"]
    assert result["rknn"] == "tiny_model.rknn"
    assert result["summary"]["inputs"][0]["shape"] == [1, 16, 16, 3]

    status, headers, data = client.request("GET", "/api/download/tiny_model.rknn")
    assert status == 200 and "attachment" in headers["content-disposition"]
    path = tmp_path / "dl.rknn"
    path.write_bytes(data)
    pkg = read_package(path)
    sim = Simulator(pkg.model_bytes, pkg.metadata, threads=1)
    pixels = np.random.default_rng(0).integers(0, 256, (1, 16, 16, 3), dtype=np.uint8)
    out = sim.run([pixels])[0]
    np.testing.assert_allclose(out, reference_output(tiny_model, pixels, mean, std), rtol=1e-4, atol=1e-4)

    # a replayed stream (Last-Event-ID) starts after the given event
    conn = http.client.HTTPConnection(client.host, client.port, timeout=30)
    conn.request("GET", f"/api/jobs/{job_id}/events", headers={"Cookie": client.cookie, "Last-Event-ID": "3"})
    replay = conn.getresponse().read().decode()
    assert "id: 3\n" not in replay and f"id: {len(events) - 1}\n" in replay


def test_a_model_of_free_sizes_builds_for_several_shape_sets(gui, client, tmp_path):
    """The 'Input shape sets' field (config dynamic_input): no input size needed; the file takes every set."""
    from openrknn.package import read_package
    from openrknn.runtime.simulator import Simulator

    model = tiny_image_model(tmp_path / "free.onnx")
    m = onnx.load(str(model))
    for v in (m.graph.input[0], m.graph.output[0]):
        for k, name in ((2, "H"), (3, "W")):
            v.type.tensor_type.shape.dim[k].dim_param = name
    onnx.save(m, str(model))
    assert upload(client, "model", "free.onnx", model.read_bytes())[0] == 200
    _, events = build_and_wait(client, {"config": {"dynamic_input": "1x3x8x8; 1x3x16x24"}, "output_name": "free.rknn"})
    assert events[-1]["state"] == "done", [e for e in events if e["type"] in ("error", "log")][-3:]
    status, _, data = client.request("GET", "/api/download/free.rknn")
    (tmp_path / "free.rknn").write_bytes(data)
    pkg = read_package(tmp_path / "free.rknn")
    sim = Simulator(pkg.model_bytes, pkg.metadata, threads=1)
    for h, w in ((8, 8), (16, 24)):
        pixels = np.random.default_rng(h).integers(0, 256, (1, h, w, 3), dtype=np.uint8)
        assert sim.run([pixels])[0].shape == (1, 4, h, w)


def test_shape_sets_field_parses_as_info_writes_them():
    assert form_to_kwargs({"dynamic_input": "1x3x240x320; 1x3x360x640"}) == {
        "dynamic_input": [[[1, 3, 240, 320]], [[1, 3, 360, 640]]]}
    assert form_to_kwargs({"dynamic_input": "1x3x8x8 + 1x2; 1x3x16x12 + 1x2"}) == {
        "dynamic_input": [[[1, 3, 8, 8], [1, 2]], [[1, 3, 16, 12], [1, 2]]]}
    assert validate_form({"dynamic_input": "1x3xHx8"})["key"] == "dynamic_input"


def test_build_with_a_bad_value_is_refused_with_the_validators_words(gui, client, tiny_model):
    client.json("POST", "/api/model/path", {"path": str(tiny_model)})
    status, r = client.json("POST", "/api/build", {"config": {"quantized_algorithm": "magic"}})
    with pytest.raises(ConfigError) as e:
        make_config(quantized_algorithm="magic")
    assert status == 422 and r["error"] == str(e.value) and r["key"] == "quantized_algorithm"


def test_model_level_config_error_fails_the_job_with_the_message(gui, client, tiny_model):
    client.json("POST", "/api/model/path", {"path": str(tiny_model)})
    _, events = build_and_wait(client, {"config": {"mean_values": "1 2"}})  # 2 values for a 3-channel input
    failure = next(e for e in events if e["type"] == "failure")
    assert "mean_values" in failure["message"] and "3 channels" in failure["message"]
    assert events[-1]["state"] == "failed"
    assert client.json("GET", "/api/state")[1]["rknn"] is None


def test_quantized_build_matches_the_api_and_measures_accuracy(gui, client, tiny_model, tmp_path):
    """Calibration images uploaded to the page give the same quantized model as build() on the same files; the
    layer table then shows the stored precision and, after an inference, per-layer cosine."""
    import cv2

    from openrknn.convert import BuildOptions, build, load_model
    from openrknn.package import read_package

    rng = np.random.default_rng(1)
    (tmp_path / "c").mkdir()
    for i in range(3):
        ok, png = cv2.imencode(".png", rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
        (tmp_path / "c" / f"calib{i}.png").write_bytes(png.tobytes())
        assert upload(client, "dataset", f"calib{i}.png", png.tobytes())[0] == 200
    state = client.json("GET", "/api/state")[1]
    assert state["dataset"]["count"] == 3 and state["dataset"]["kind"] == "folder"
    client.json("POST", "/api/model/path", {"path": str(tiny_model)})
    status, r = client.json("POST", "/api/layers/accuracy", {})
    assert status == 409  # nothing built yet
    _, events = build_and_wait(client, {"config": {"std_values": "255", "quantized_algorithm": "mmse"},
                                        "do_quantization": True})
    failure = [e["message"] for e in events if e["type"] == "failure"]
    assert not failure, failure
    assert any(e["type"] == "log" and "calibration: 3 file(s)" in e["message"] for e in events)

    (tmp_path / "c" / "dataset.txt").write_text("".join(f"calib{i}.png\n" for i in range(3)))
    direct = build(load_model(tiny_model), make_config(std_values=[255], quantized_algorithm="mmse"),
                   BuildOptions(dataset=str(tmp_path / "c" / "dataset.txt")))
    gui_pkg = read_package(session_of(gui, client).outputs / "tiny.rknn")
    ours, theirs = gui_pkg.metadata["quantization"], direct.package.metadata["quantization"]
    assert (ours["dtype"], ours["algorithm"], ours["calibration_samples"]) == ("asymmetric_quantized-u8", "mmse", 3)
    assert ours["tensors"].keys() == theirs["tensors"].keys()
    for name, t in theirs["tensors"].items():
        np.testing.assert_allclose(ours["tensors"][name]["scale"], t["scale"], rtol=1e-6, err_msg=name)

    layers = client.json("GET", "/api/layers")[1]
    rows = {r["name"]: r for r in layers["rows"]}
    assert rows["conv"]["precision"] == "uint8" and rows["conv"]["fused_into"] == "relu"
    assert rows["relu"]["quantized"] and rows["relu"]["cosine"] is None
    assert layers["accuracy"]["available"] and not layers["accuracy"]["measured"]
    status, r = client.json("POST", "/api/layers/accuracy", {})
    assert status == 409 and "inference" in r["error"]
    ok, png = cv2.imencode(".png", rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    assert client.json("POST", "/api/infer?filename=probe.png", png.tobytes(),
                       headers={"Content-Type": "application/octet-stream"})[0] == 200
    status, measured = client.json("POST", "/api/layers/accuracy", {})
    assert status == 200, measured
    rows = {r["name"]: r for r in measured["rows"]}
    assert measured["accuracy"]["measured"] and measured["accuracy"]["image"] == "probe.png"
    assert 0.9 < rows["relu"]["cosine"] <= 1.0 + 1e-9 and rows["conv"]["cosine"] == rows["relu"]["cosine"]
    assert client.json("GET", "/api/layers")[1]["rows"] == measured["rows"]  # kept for the page's next load

    # keep-float marks reach the quantizer: the marked layer's output is left unquantized in the built model
    assert layers["hybrid"]["available"]
    _, events = build_and_wait(client, {"config": {"std_values": "255"}, "do_quantization": True,
                                        "keep_float": ["relu"], "output_name": "hybrid.rknn"})
    done = next(e for e in events if e["type"] == "done")["result"]
    assert done["keep_float"] == ["relu"]
    rows = {r["name"]: r for r in client.json("GET", "/api/layers")[1]["rows"]}
    assert not rows["relu"]["quantized"], rows["relu"]


def test_calibration_paths_on_this_machine(gui, client, tmp_path):
    import cv2

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(2):
        cv2.imwrite(str(folder / f"{i}.jpg"), np.full((8, 8, 3), 40 * i, np.uint8))
    (folder / "notes.md").write_text("not an image")
    status, r = client.json("POST", "/api/dataset/path", {"path": str(folder)})
    assert status == 200 and (r["dataset"]["kind"], r["dataset"]["count"]) == ("folder", 2)
    txt = tmp_path / "dataset.txt"
    txt.write_text("# calibration\nimgs/0.jpg\n\nimgs/1.jpg\nimgs/0.jpg\n")
    status, r = client.json("POST", "/api/dataset/path", {"path": str(txt)})
    assert status == 200 and (r["dataset"]["kind"], r["dataset"]["count"]) == ("file", 3)
    status, r = client.json("POST", "/api/dataset/path", {"path": str(tmp_path / "missing")})
    assert status == 400 and "does not exist" in r["error"]
    assert client.json("GET", "/api/state")[1]["dataset"]["count"] == 3  # a bad pick keeps the last good one
    empty = tmp_path / "empty"
    empty.mkdir()
    status, r = client.json("POST", "/api/dataset/path", {"path": str(empty)})
    assert status == 400 and "no calibration files" in r["error"]


def test_torchscript_model_takes_its_input_size_from_the_form(gui, client, tmp_path):
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU()).eval()
    pt = tmp_path / "tiny_net.pt"
    torch.jit.trace(net, torch.rand(1, 3, 16, 20)).save(str(pt))
    status, r = upload(client, "model", "tiny_net.pt", pt.read_bytes())
    assert status == 200 and r["model"]["framework"] == "pytorch" and r["model"]["needs_input_size"]
    _, events = build_and_wait(client, {"config": {}})
    failure = next(e for e in events if e["type"] == "failure")
    assert "input_size_list" in failure["message"]
    status, r = client.json("POST", "/api/build", {"config": {}, "input_size": "3,16,x"})
    assert status == 400 and r["key"] == "input_size_list"
    _, events = build_and_wait(client, {"config": {}, "input_size": "3, 16, 20"})
    result = next(e for e in events if e["type"] == "done")["result"]
    assert result["summary"]["inputs"][0]["shape"] == [1, 16, 20, 3]
    assert result["summary"]["source"]["framework"] == "pytorch"


def test_a_torch_export_archive_shows_its_own_input_shapes_and_builds_without_them(gui, client, tmp_path):
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU()).eval()
    pt2 = tmp_path / "tiny_net.pt2"
    torch.export.save(torch.export.export(net, (torch.rand(1, 3, 16, 20),)), str(pt2))
    status, r = upload(client, "model", "tiny_net.pt2", pt2.read_bytes())
    assert status == 200 and r["model"]["framework"] == "pytorch" and not r["model"]["needs_input_size"]
    assert r["model"]["inputs"][0]["shape"] == [1, 3, 16, 20]
    _, events = build_and_wait(client, {"config": {}})
    result = next(e for e in events if e["type"] == "done")["result"]
    assert result["summary"]["inputs"][0]["shape"] == [1, 16, 20, 3]


def test_an_rknn_file_is_ready_for_inference_without_a_build(gui, client, tiny_model):
    client.json("POST", "/api/model/path", {"path": str(tiny_model)})
    assert build_and_wait(client, {"config": {}})[1][-1]["state"] == "done"
    data = client.request("GET", "/api/download/tiny.rknn")[2]
    other = Client(gui.url).open_session()
    status, r = upload(other, "model", "given.rknn", data)
    assert status == 200 and r["model"]["framework"] == "rknn" and r["rknn"] == "given.rknn"
    assert r["model"]["inputs"][0]["shape"] == [1, 16, 16, 3]
    assert other.json("POST", "/api/build", {"config": {}})[0] == 409
    pixels = np.zeros((16, 16, 3), np.uint8)
    import cv2

    ok, png = cv2.imencode(".png", pixels)
    status, r = other.json("POST", "/api/infer?filename=z.png", png.tobytes(),
                           headers={"Content-Type": "application/octet-stream"})
    assert status == 200 and r["outputs"][0]["shape"] == [1, 4, 16, 16]
    assert other.request("GET", "/api/download/given.rknn")[2] == data
    status, r = upload(other, "model", "junk.rknn", b"RKNN\0\0not really a model")
    assert status == 400 and "rknn" in r["error"].lower()


def test_sessions_are_isolated(gui, tiny_model):
    a, b = Client(gui.url).open_session(), Client(gui.url).open_session()
    a.json("POST", "/api/model/path", {"path": str(tiny_model)})
    job_id, events = build_and_wait(a, {"config": {}})
    assert events[-1]["state"] == "done"
    assert a.request("GET", "/api/download/tiny.rknn")[0] == 200
    assert b.request("GET", "/api/download/tiny.rknn")[0] == 404
    assert b.request("GET", f"/api/jobs/{job_id}")[0] == 404
    assert b.request("GET", f"/api/jobs/{job_id}/events")[0] == 404


def test_layers_and_inference_endpoints(gui, client, tiny_model):
    import cv2

    client.json("POST", "/api/model/path", {"path": str(tiny_model)})
    assert build_and_wait(client, {"config": {}})[1][-1]["state"] == "done"
    layers = client.json("GET", "/api/layers")[1]
    assert [(r["name"], r["op_type"], r["precision"]) for r in layers["rows"]][-2:] == [("conv", "Conv", "float"),
                                                                                        ("relu", "Relu", "float")]
    assert layers["hybrid"]["available"] is False and layers["hybrid"]["reason"]
    img = np.random.default_rng(2).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    ok, jpg = cv2.imencode(".png", img)
    status, r = client.json("POST", "/api/infer?filename=pic.png&resize=stretch&feed_order=rgb", jpg.tobytes(),
                            headers={"Content-Type": "application/octet-stream"})
    assert status == 200, r
    assert r["outputs"][0]["shape"] == [1, 4, 16, 16] and r["yolox"] is None and r["detections"] is None
    status, r = client.json("POST", "/api/infer?filename=pic.png", b"not an image",
                            headers={"Content-Type": "application/octet-stream"})
    assert status == 400 and "could not be decoded" in r["error"]


# ---------------------------------------------------------------- entry points


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


def test_python_m_openrknn_gui_prints_the_url_and_serves(tmp_path):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "openrknn.gui", "--port", str(port), "--workdir", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=str(ROOT))
    try:
        line = proc.stdout.readline()
        assert f"http://127.0.0.1:{port}/" in line
        deadline = time.monotonic() + 20
        while True:
            try:
                status, _, body = Client(f"http://127.0.0.1:{port}").request("GET", "/")
                break
            except ConnectionRefusedError:
                assert time.monotonic() < deadline, "server did not answer"
                time.sleep(0.1)
        assert status == 200 and b"openrknn" in body
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_openrknn_gui_cli_validates_its_arguments():
    from openrknn.cli import build_parser

    args = build_parser().parse_args(["gui"])
    assert (args.host, args.port) == ("127.0.0.1", 8000) and args.func.__module__ == "openrknn.commands.gui"
    proc = subprocess.run([sys.executable, "-m", "openrknn", "gui", "--port", "70000"], capture_output=True, text=True,
                          env=_env(), cwd=str(ROOT), timeout=60)
    assert proc.returncode == 2 and "70000 is not in 1..65535" in proc.stderr


def test_darknet_model_is_two_uploads_and_builds(gui, client, tmp_path):
    """A two-file format: the weights upload is kept, then its .cfg is the model and builds like any other."""
    import loader_models as lm

    files = lm.write_darknet(tmp_path)
    status, r = upload(client, "model", "tiny.cfg", files["cfg"].read_bytes())
    assert status == 400 and "tiny.weights" in r["error"] and "upload its .weights" in r["error"]
    assert upload(client, "model", "tiny.weights", files["weights"].read_bytes())[0] == 200
    status, r = upload(client, "model", "tiny.cfg", files["cfg"].read_bytes())
    assert status == 200 and r["model"]["framework"] == "darknet"
    assert r["model"]["inputs"][0]["shape"] == [1, 3, 32, 32] and len(r["model"]["outputs"]) == 2
    _, events = build_and_wait(client, {"config": {"mean_values": "0 0 0", "std_values": "255 255 255"},
                                        "output_name": "yolo.rknn"})
    assert events[-1]["state"] == "done"
    result = next(e for e in events if e["type"] == "done")["result"]
    assert result["summary"]["inputs"][0]["shape"] == [1, 32, 32, 3]


def test_tfjs_model_is_its_shards_then_model_json(gui, client, tmp_path):
    """A TensorFlow.js graph model: its .bin shards are kept as uploads, then model.json is the model."""
    import loader_models as lm

    model = lm.write_tfjs(tmp_path / "tfjs", lm.tiny_tfjs_graph(), lm.TINY_TFJS_STORAGE)
    status, r = upload(client, "model", "model.json", model.read_bytes())
    assert status == 400 and "group1-shard1of2.bin" in r["error"] and "upload its .bin" in r["error"]
    assert "/" not in r["error"] and ".incoming" not in r["error"], r["error"]  # no server folder or temporary name
    for shard in sorted(model.parent.glob("*.bin")):
        assert upload(client, "model", shard.name, shard.read_bytes())[0] == 200
    status, r = upload(client, "model", "model.json", model.read_bytes())
    assert status == 200 and r["model"]["framework"] == "tfjs"
    assert r["model"]["inputs"][0]["shape"] == [1, 12, 12, 3] and len(r["model"]["outputs"]) == 2
    # picked by path on this machine: the user's own folder is named, as it helps them
    (model.parent / "group1-shard2of2.bin").unlink()
    status, r = client.json("POST", "/api/model/path", {"path": str(model)})
    assert status == 400 and str(model.parent) in r["error"], r["error"]


def test_keras_model_uploads_as_one_file(gui, client, tmp_path):
    """A Keras .keras archive (and .h5) is one file; a weights-only .h5 is refused with what to save instead."""
    data = Path(__file__).resolve().parent / "data" / "keras"
    status, r = upload(client, "model", "functional.keras", (data / "functional.keras").read_bytes())
    assert status == 200 and r["model"]["framework"] == "keras", r
    assert r["model"]["inputs"][0]["shape"] == [1, 24, 20, 3] and len(r["model"]["outputs"]) == 2
    h5py = pytest.importorskip("h5py")
    weights = tmp_path / "weights.h5"
    with h5py.File(weights, "w") as f:
        f.create_dataset("dense/kernel", data=np.zeros((2, 2), np.float32))
    status, r = upload(client, "model", "weights.h5", weights.read_bytes())
    assert status == 400 and "not a Keras model" in r["error"] and "model.save" in r["error"], r
    assert ".incoming" not in r["error"], r["error"]
