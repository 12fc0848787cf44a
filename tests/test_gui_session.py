"""The GUI as a user finds it (issue 20), through its HTTP API: the session keeps the form and the last inference
across reloads and a rebuild reuses the built model's settings; the layer table speaks in the user's layer names
(parts folded in), offers keep-float only where it can work and refreshes after the rebuild; the form is checked
against the loaded model as it is typed; every error is a sentence naming the user's file (never the session
folder); YOLOX detections get COCO names; a busy port is a one-line error. Runs a real uvicorn server."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the GUI needs fastapi (pip install fastapi uvicorn)")
pytest.importorskip("uvicorn", reason="the GUI needs uvicorn (pip install fastapi uvicorn)")

from gui_models import DOG, split_model, tiny_yolox  # noqa: E402
from test_gui_api import Client, _env, build_and_wait, tiny_image_model, upload  # noqa: E402

from openrknn.gui.app import GuiSettings  # noqa: E402
from openrknn.gui.layers import accuracy_summary, fold_parts  # noqa: E402
from openrknn.gui.server import BackgroundServer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gui(tmp_path_factory):
    server = BackgroundServer(GuiSettings(port=0, workdir=tmp_path_factory.mktemp("gui_session_work"),
                                          max_upload_bytes=4 * 2**20, max_image_bytes=2**20))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def client(gui) -> Client:
    return Client(gui.url).open_session()


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("gui_session_models")
    return {"tiny": tiny_image_model(folder / "tiny.onnx"), "split": split_model(folder / "split.onnx"),
            "yolox": tiny_yolox(folder / "tiny_yolox.onnx")}


def png(pixels: np.ndarray) -> bytes:
    import cv2

    ok, data = cv2.imencode(".png", pixels)
    assert ok
    return data.tobytes()


def calibrate(client: Client, n: int = 4, hw: int = 12) -> None:
    rng = np.random.default_rng(11)
    for i in range(n):
        status, r = upload(client, "dataset", f"calib{i}.png", png(rng.integers(0, 256, (hw, hw, 3), dtype=np.uint8)))
        assert status == 200, r


def infer(client: Client, data: bytes, name: str = "probe.png", **params):
    query = "&".join(f"{k}={quote(str(v))}" for k, v in {"filename": name, **params}.items())
    return client.json("POST", f"/api/infer?{query}", data, headers={"Content-Type": "application/octet-stream"})


def done_result(events: list) -> dict:
    failures = [e["message"] for e in events if e["type"] == "failure"]
    assert not failures, failures
    return next(e for e in events if e["type"] == "done")["result"]


def wait_for_job(client: Client, job_id: str) -> list:
    return client.events(job_id)


INT8_BUILD = {"config": {"std_values": "255", "quant_img_RGB2BGR": True}, "do_quantization": True,
              "output_name": "int8.rknn"}


@pytest.fixture
def int8_split(client, models) -> Client:
    """A session with the split model built int8 from uploaded calibration images (BGR decode, own output name)."""
    calibrate(client)
    assert client.json("POST", "/api/model/path", {"path": str(models["split"])})[0] == 200
    done_result(build_and_wait(client, INT8_BUILD)[1])
    return client


# ---------------------------------------------------------------- 1. state that survives a reload


def test_the_form_is_kept_for_the_next_page_load(gui, client):
    form = {"config": {"mean_values": "1 2 3", "quant_img_RGB2BGR": True, "target_platform": "rk3588"},
            "do_quantization": True, "output_name": "mine.rknn", "output_auto": False, "input_size": "",
            "infer": {"score_thr": "0.5", "class_names": "iris, pupil"}}
    assert client.json("GET", "/api/state")[1]["form"] is None
    assert client.json("POST", "/api/form", {"form": form}) == (200, {"ok": True})
    reloaded = Client(gui.url)
    reloaded.cookie = client.cookie  # the same browser after a reload
    assert reloaded.json("GET", "/api/state")[1]["form"] == form
    assert Client(gui.url).open_session().json("GET", "/api/state")[1]["form"] is None  # another browser
    assert client.json("POST", "/api/form", {"form": "x"})[0] == 400
    assert client.json("POST", "/api/form", {"form": {"infer": {"class_names": "x" * 300_000}}})[0] == 413


def test_a_rebuild_reuses_the_built_settings_not_the_form(int8_split, models):
    client = int8_split
    # after a reload the form may say anything (here: quantization off, another name); the rebuild must not care
    client.json("POST", "/api/form", {"form": {"config": {}, "do_quantization": False, "output_name": "x.rknn"}})
    state = client.json("GET", "/api/state")[1]
    assert state["rebuild"] and state["result"]["summary"]["quantization"]["dtype"] == "asymmetric_quantized-u8"
    status, r = client.json("POST", "/api/rebuild", {"keep_float": ["pw_conv"]})
    assert status == 200, r
    result = done_result(wait_for_job(client, r["job_id"]))
    assert result["rknn"] == "int8.rknn" and result["keep_float"] == ["pw_conv"]
    assert result["summary"]["quantization"]["dtype"] == "asymmetric_quantized-u8"
    assert result["summary"]["build"]["quant_img_RGB2BGR"] is True
    assert result["summary"]["inputs"][0]["std"] == [255.0, 255.0, 255.0]


def test_a_rebuild_that_changes_nothing_is_refused(client, int8_split):
    assert int8_split.json("POST", "/api/rebuild", {"keep_float": []})[0] == 409
    status, r = int8_split.json("POST", "/api/rebuild", {"keep_float": ["slice_a__nope"]})
    assert status == 400 and "slice_a__nope" in r["error"] and "cannot be kept in float" in r["error"]
    fresh = Client(int8_split.origin).open_session()
    status, r = fresh.json("POST", "/api/rebuild", {"keep_float": ["pw_conv"]})
    assert status == 409 and "pick a model" in r["error"]


def test_a_float_model_offers_no_rebuild(client, models):
    client.json("POST", "/api/model/path", {"path": str(models["tiny"])})
    done_result(build_and_wait(client, {"config": {}})[1])
    status, r = client.json("POST", "/api/rebuild", {"keep_float": ["conv"]})
    assert status == 409 and "float" in r["error"]


def test_the_last_inference_survives_a_reload(gui, int8_split):
    client = int8_split
    status, report = infer(client, png(np.full((12, 12, 3), 90, np.uint8)))
    assert status == 200, report
    reloaded = Client(gui.url)
    reloaded.cookie = client.cookie
    state = reloaded.json("GET", "/api/state")[1]
    assert state["inference"] == report and state["inference"]["image"]["name"] == "probe.png"
    layers = reloaded.json("GET", "/api/layers")[1]
    assert layers["accuracy"]["available"]
    status, measured = reloaded.json("POST", "/api/layers/accuracy", {})  # "Measure accuracy" still works
    assert status == 200 and measured["accuracy"]["measured"], measured
    # a new build makes the shown inference stale: it is dropped
    status, r = client.json("POST", "/api/rebuild", {"keep_float": ["stem_conv"]})
    assert status == 200
    done_result(wait_for_job(client, r["job_id"]))
    assert client.json("GET", "/api/state")[1]["inference"] is None


def test_build_waits_for_calibration_uploads_in_flight(gui, client, models):
    client.json("POST", "/api/model/path", {"path": str(models["split"])})
    release = threading.Event()
    image = png(np.random.default_rng(5).integers(0, 256, (12, 12, 3), dtype=np.uint8))

    def slow_body():
        yield image[:20]
        release.wait(30)
        yield image[20:]

    answer = {}

    def send():
        answer["status"], answer["body"] = upload(client, "dataset", "slow.png", slow_body(), chunked=True)

    sender = threading.Thread(target=send)
    sender.start()
    try:
        deadline = time.monotonic() + 20
        while client.json("GET", "/api/state")[1]["uploading"] == 0:
            assert time.monotonic() < deadline, "the upload never started"
            time.sleep(0.05)
        status, r = client.json("POST", "/api/build", {"config": {}, "do_quantization": True})
        assert status == 409 and "still uploading" in r["error"]
    finally:
        release.set()
        sender.join(30)
    assert answer["status"] == 200 and client.json("GET", "/api/state")[1]["uploading"] == 0
    done_result(build_and_wait(client, {"config": {}, "do_quantization": True})[1])


# ---------------------------------------------------------------- 2. the layer table in the user's names


def test_layer_rows_are_the_users_layers_with_parts_folded_in(int8_split):
    layers = int8_split.json("GET", "/api/layers")[1]
    rows = {r["name"]: r for r in layers["rows"]}
    assert not [n for n in rows if "__split" in n or "_split_concat" in n]  # names the user's model does not have
    assert {"stem_conv", "stem_sigmoid", "stem_mul", "dw_conv", "dw_mul", "pw_conv", "swap_concat"} <= set(rows)
    assert [p["name"] for p in rows["stem_conv"]["parts"]] == [f"stem_conv__split{i}" for i in range(3)]
    assert "dw_split_concat" in [p["name"] for p in rows["dw_mul"]["parts"]]  # the concat rebuilding dw_mul's output
    assert rows["stem_conv"]["fused_into"] == "stem_mul" and rows["stem_conv"]["op_type"] == "Conv"
    assert rows["pw_conv"]["parts"] == [] and rows["pw_conv"]["precision"] == "uint8"
    # keep-float only where the quantizer has something to drop
    assert rows["stem_conv"]["keepable"] and rows["dw_mul"]["keepable"] and rows["pw_conv"]["keepable"]
    assert not rows["swap_concat"]["keepable"] and not rows["flatten"]["keepable"]
    assert layers["hybrid"]["available"]


def test_rows_are_refreshed_after_a_keep_float_rebuild(int8_split):
    client = int8_split
    assert infer(client, png(np.full((12, 12, 3), 60, np.uint8)))[0] == 200
    before = {r["name"]: r for r in client.json("POST", "/api/layers/accuracy", {})[1]["rows"]}
    assert before["dw_mul"]["precision"] == "uint8" and before["dw_mul"]["cosine"] is not None
    status, r = client.json("POST", "/api/rebuild", {"keep_float": ["dw_mul"]})
    assert status == 200
    done_result(wait_for_job(client, r["job_id"]))
    layers = client.json("GET", "/api/layers")[1]
    after = {r["name"]: r for r in layers["rows"]}
    assert layers["kept_float"] == ["dw_mul"]
    # the kept layer runs in float; it is not "fused" into the next layer's int8 output
    assert after["dw_mul"]["precision"] == "float16" and not after["dw_mul"]["quantized"]
    assert after["dw_mul"]["fused_into"] is None and all(not p["quantized"] for p in after["dw_mul"]["parts"])
    assert after["pw_conv"]["precision"] == "uint8"
    # the old model's cosines are gone until measured again
    assert not layers["accuracy"]["measured"] and all(r["cosine"] is None for r in layers["rows"])


def test_the_accuracy_note_counts_end_to_end_and_own_cosines(client, models):
    """With a threshold every quantized layer misses end to end, the summary counts them (the note said '0 below'
    because it counted the layers' own cosines only)."""
    calibrate(client)
    client.json("POST", "/api/model/path", {"path": str(models["split"])})
    done_result(build_and_wait(client, {"config": {"std_values": "255", "auto_hybrid_cos_thresh": "0.9999999"},
                                        "do_quantization": True})[1])
    assert infer(client, png(np.random.default_rng(3).integers(0, 256, (12, 12, 3), dtype=np.uint8)))[0] == 200
    layers = client.json("POST", "/api/layers/accuracy", {})[1]
    rows, summary = layers["rows"], layers["accuracy"]["summary"]
    threshold = layers["cos_threshold"]
    assert threshold == pytest.approx(0.9999999)
    e2e = [r["cosine"] for r in rows if r["cosine"] is not None]
    own = [r["cosine_single"] for r in rows if r["cosine_single"] is not None]
    assert summary["below_end_to_end"] == sum(c < threshold for c in e2e) > 0
    assert summary["below_alone"] == sum(c < threshold for c in own)
    assert summary["worst_end_to_end"]["cosine"] == min(e2e)
    assert next(r for r in rows if r["name"] == summary["worst_end_to_end"]["name"])["cosine"] == min(e2e)


def test_fold_parts_gives_a_fused_layer_the_accuracy_of_the_layer_it_is_fused_into():
    def row(i, name, op, group=None, fused=None, cos=None):
        return {"index": i, "name": name, "op_type": op, "tensor": name + ":0", "precision": "uint8",
                "quantized": True, "fused_into": fused, "cosine": cos, "cosine_single": cos, "euclidean": None,
                "group": group}

    rows = [row(0, "c__split0", "Conv", "c", "m__split0"), row(1, "m__split0", "Mul", "m"),
            row(2, "c__split1", "Conv", "c", "m__split1"), row(3, "m__split1", "Mul", "m"),
            row(4, "t_split_concat", "Concat", "m", cos=0.9), row(5, "out", "Conv", cos=0.95)]
    folded = {r["name"]: r for r in fold_parts(rows, {"c", "m"}, {"c": "Conv", "m": "Mul"})}
    assert list(folded) == ["c", "m", "out"]
    assert folded["c"]["fused_into"] == "m" and folded["c"]["cosine"] == 0.9 and folded["m"]["cosine"] == 0.9
    assert folded["m"]["op_type"] == "Mul" and len(folded["m"]["parts"]) == 3
    assert [folded[n]["keepable"] for n in folded] == [True, True, False]
    summary = accuracy_summary(list(folded.values()), 0.92)
    assert summary["below_end_to_end"] == 2 and summary["worst_end_to_end"] == {"name": "c", "cosine": 0.9}


# ---------------------------------------------------------------- 3. errors before the build, and readable


def dynamic_model(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.full((2, 3, 1, 1), 0.5, np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], name="conv")], "dyn",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, "h", "w"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, "h", "w"])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def validate(client: Client, config: dict, input_size: str = ""):
    status, r = client.json("POST", "/api/validate", {"config": config, "input_size": input_size})
    assert status == 200
    return r


def test_channel_counts_are_checked_against_the_model_as_typed(client, models):
    assert validate(client, {"mean_values": "1 2"})["ok"]  # no model yet: only what config() itself checks
    client.json("POST", "/api/model/path", {"path": str(models["tiny"])})
    bad = validate(client, {"mean_values": "1 2"})
    assert not bad["ok"] and bad["key"] == "mean_values" and "3 channels" in bad["message"]
    assert validate(client, {"std_values": "1 2 3 4"})["key"] == "std_values"
    assert validate(client, {"reorder_channel": "1 0"})["key"] == "reorder_channel"
    assert validate(client, {"mean_values": "1 2 3#4 5 6"})["key"] == "mean_values"  # two lists, one input
    assert validate(client, {"mean_values": "1 2 3", "std_values": "255", "reorder_channel": "2 1 0"})["ok"]


def test_input_sizes_are_checked_against_the_model_as_typed(client, tmp_path):
    assert client.json("POST", "/api/model/path", {"path": str(dynamic_model(tmp_path / "dyn.onnx"))})[0] == 200
    missing = validate(client, {})
    assert not missing["ok"] and missing["key"] == "input_size_list" and "input size" in missing["message"]
    assert validate(client, {}, "3,a,8")["key"] == "input_size_list"
    assert validate(client, {}, "3,0,8")["key"] == "input_size_list"
    two = validate(client, {}, "3,8,8#3,8,8")
    assert two["key"] == "input_size_list" and "1 input" in two["message"]
    assert validate(client, {"mean_values": "1 2"}, "3,8,8")["key"] == "mean_values"
    assert validate(client, {"mean_values": "1 2 3"}, "3,8,8")["ok"]


def test_a_text_file_named_onnx_is_refused_with_its_name(gui, client, models, tmp_path):
    assert upload(client, "model", "tiny.onnx", models["tiny"].read_bytes())[0] == 200
    good = (Path(client_session(gui, client).uploads) / "tiny.onnx").read_bytes()
    for body in (b"this is a text file, not a model\n", b"\x08\x07" * 40, b"{\"graph\": 1}"):
        status, r = upload(client, "model", "tiny.onnx", body)
        assert status == 400, r
        assert "'tiny.onnx' is not an ONNX model" in r["error"] and str(gui.settings.workdir) not in r["error"]
    state = client.json("GET", "/api/state")[1]
    assert state["model"]["name"] == "tiny.onnx" and state["model"]["nodes"] == 2  # the good model is still there
    assert (client_session(gui, client).uploads / "tiny.onnx").read_bytes() == good
    fake = tmp_path / "fake.onnx"
    fake.write_text("hello")
    status, r = client.json("POST", "/api/model/path", {"path": str(fake)})
    assert status == 400 and "'fake.onnx' is not an ONNX model" in r["error"]
    status, r = upload(client, "model", "state_dict.pt", b"\x80\x04not a zip")
    assert status == 400 and "'state_dict.pt' is not a TorchScript model" in r["error"] and "jit" in r["error"]


def test_a_damaged_rknn_names_the_users_file_not_the_session_folder(gui, client):
    status, r = upload(client, "model", "damaged.rknn", b"RKNN" + bytes(200))
    assert status == 400 and "damaged.rknn" in r["error"]
    assert str(gui.settings.workdir) not in r["error"] and "incoming" not in r["error"]


def test_thresholds_that_are_not_numbers_are_readable_errors(client, models):
    client.json("POST", "/api/model/path", {"path": str(models["tiny"])})
    done_result(build_and_wait(client, {"config": {}})[1])
    image = png(np.zeros((16, 16, 3), np.uint8))
    status, r = infer(client, image, score_thr="abc")
    assert status == 400 and r["error"].startswith("score threshold 'abc' is not a number")
    status, r = infer(client, image, nms_thr="2")
    assert status == 400 and "not between 0 and 1" in r["error"]
    status, r = client.json("POST", "/api/infer", image, headers={"Content-Type": "application/octet-stream"})
    assert status == 400 and "'filename' is missing" in r["error"]  # not FastAPI's raw 422 body


def test_no_server_path_reaches_the_page(gui, client, models):
    workdir = str(gui.settings.workdir)
    calibrate(client)
    upload(client, "model", "split.onnx", models["split"].read_bytes())
    job_id, events = build_and_wait(client, {"config": {"std_values": "255"}, "do_quantization": True})
    done_result(events)
    seen = [json.dumps(events), json.dumps(client.json("GET", "/api/state")[1]),
            json.dumps(client.json("GET", f"/api/jobs/{job_id}")[1]), json.dumps(client.json("GET", "/api/layers")[1])]
    assert all(workdir not in text for text in seen), [t[t.index(workdir) - 80:][:200] for t in seen if workdir in t]
    assert any("calibration:" in e.get("message", "") for e in events)  # the line is there, without the folder
    # a failing build's message too
    client.json("POST", "/api/dataset/clear", {})
    _, events = build_and_wait(client, {"config": {}, "do_quantization": True})
    failure = next(e for e in events if e["type"] == "failure")
    assert workdir not in failure["message"]


def test_an_unexpected_error_is_a_json_sentence(gui, client, monkeypatch):
    import openrknn.gui.routes.page as page

    def broken():
        raise RuntimeError(f"something broke in {gui.settings.workdir}/x")

    monkeypatch.setattr(page, "config_schema", broken)
    status, headers, body = client.request("GET", "/api/schema")
    error = json.loads(body)["error"]
    assert status == 500 and error.startswith("internal error: RuntimeError: something broke")
    assert str(gui.settings.workdir) not in error


def client_session(gui, client: Client):
    return gui.app.state.store.get(client.token)


# ---------------------------------------------------------------- 4. class names


def test_yolox_detections_are_named_from_coco_by_default(client, models):
    client.json("POST", "/api/model/path", {"path": str(models["yolox"])})
    result = done_result(build_and_wait(client, {"config": {}})[1])
    assert client.json("GET", "/api/state")[1]["yolox"] == {"layout": "flat", "num_classes": 80}
    image = png(np.full((32, 32, 3), 128, np.uint8))
    status, r = infer(client, image)
    assert status == 200, r
    assert r["class_names"] == "COCO" and [d["label"] for d in r["detections"]] == ["dog"]
    assert r["detections"][0]["class_id"] == DOG and r["detections"][0]["box"] == [4.0, 4.0, 20.0, 20.0]
    names = ",".join(f"thing{i}" for i in range(80))
    status, r = infer(client, image, class_names=names)
    assert r["class_names"] == "given" and r["detections"][0]["label"] == f"thing{DOG}"
    assert result["summary"]["outputs"][0]["shape"] == [1, 21, 85]


# ---------------------------------------------------------------- 5. a busy port


@pytest.mark.parametrize("command", [["-m", "openrknn.gui"], ["-m", "openrknn", "gui"]])
def test_a_busy_port_is_one_clear_error_and_no_banner(command, tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        proc = subprocess.run([sys.executable, *command, "--port", str(port), "--workdir", str(tmp_path)],
                              capture_output=True, text=True, env=_env(), cwd=str(ROOT), timeout=60)
    assert proc.returncode == 1
    assert "http://" not in proc.stdout, proc.stdout  # no "running at" banner for a server that never ran
    assert f"port {port} is already in use" in proc.stderr and "--port" in proc.stderr
    assert "Traceback" not in proc.stderr and "Errno" not in proc.stderr
    assert proc.stderr.count("\n") == 1
