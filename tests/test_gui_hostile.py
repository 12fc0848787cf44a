"""The GUI's defences tried from outside, over HTTP (issue 17): oversized and cut-off uploads, file names that try to
leave the session folder, wrong Host and Origin headers (DNS rebinding, other local pages), and several sessions
working at once. Runs a real uvicorn server on loopback."""

from __future__ import annotations

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the GUI needs fastapi (pip install fastapi uvicorn)")
pytest.importorskip("uvicorn", reason="the GUI needs uvicorn (pip install fastapi uvicorn)")

from test_gui_api import Client, build_and_wait, tiny_image_model, upload  # noqa: E402

from openrknn.gui.app import GuiSettings  # noqa: E402
from openrknn.gui.guard import GuardMiddleware  # noqa: E402
from openrknn.gui.server import BackgroundServer  # noqa: E402

MODEL_LIMIT = 256 * 1024
IMAGE_LIMIT = 64 * 1024


@pytest.fixture(scope="module")
def gui(tmp_path_factory):
    server = BackgroundServer(GuiSettings(port=0, workdir=tmp_path_factory.mktemp("gui_hostile") / "work",
                                          max_upload_bytes=MODEL_LIMIT, max_image_bytes=IMAGE_LIMIT))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def client(gui) -> Client:
    return Client(gui.url).open_session()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return tiny_image_model(tmp_path_factory.mktemp("gui_hostile_models") / "tiny.onnx")


def session_root(gui, client: Client) -> Path:
    return gui.app.state.store.get(client.token).root


def files_under(folder: Path) -> list:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def png(pixels: np.ndarray) -> bytes:
    import cv2

    return cv2.imencode(".png", pixels)[1].tobytes()


def built(client: Client, tiny: Path, **config) -> None:
    assert upload(client, "model", "tiny.onnx", tiny.read_bytes())[0] == 200
    _, events = build_and_wait(client, {"config": config})
    assert events[-1]["state"] == "done", [e for e in events if e["type"] == "failure"]


def chunks(total: int, size: int = 16384):
    for start in range(0, total, size):
        yield b"\x89" * min(size, total - start)


# ---------------------------------------------------------------- oversized and cut-off uploads


def test_oversized_uploads_are_refused_on_every_endpoint_and_leave_nothing(gui, client, tiny):
    built(client, tiny)
    before = files_under(session_root(gui, client))
    attempts = [("model/upload?filename=big.onnx", MODEL_LIMIT + 1),
                ("dataset/upload?filename=big.png", IMAGE_LIMIT + 1), ("infer?filename=big.png", IMAGE_LIMIT + 1)]
    for path, size in attempts:
        # announced by Content-Length (refused before the body is read) and streamed without one
        status, r = client.json("POST", f"/api/{path}", b"\0" * size,
                                headers={"Content-Type": "application/octet-stream"})
        assert status == 413 and "limit" in r["error"], (path, status, r)
        status, r = client.json("POST", f"/api/{path}", chunks(size * 4), chunked=True,
                                headers={"Content-Type": "application/octet-stream"})
        assert status == 413 and "limit" in r["error"], (path, status, r)
    assert files_under(session_root(gui, client)) == before  # no partial file, no temp file
    assert client.json("GET", "/api/state")[1]["model"]["name"] == "tiny.onnx"  # the current model is untouched


def test_an_upload_cut_off_midway_leaves_no_file(gui, client):
    uploads = session_root(gui, client) / "uploads"
    with socket.create_connection((client.host, client.port), timeout=10) as s:
        s.sendall((f"POST /api/model/upload?filename=cut.onnx HTTP/1.1\r\nHost: {client.host}:{client.port}\r\n"
                   f"Origin: {client.origin}\r\nCookie: {client.cookie}\r\nContent-Type: application/octet-stream\r\n"
                   f"Content-Length: {MODEL_LIMIT - 10}\r\n\r\n").encode() + b"\x08" * 5000)
        deadline = time.monotonic() + 10
        while not (uploads.is_dir() and any(uploads.iterdir())):  # the upload is streaming into a temp file
            assert time.monotonic() < deadline, "the upload did not start"
            time.sleep(0.05)
    deadline = time.monotonic() + 10
    while uploads.is_dir() and any(uploads.iterdir()):
        assert time.monotonic() < deadline, f"left behind: {list(uploads.iterdir())}"
        time.sleep(0.05)
    assert client.json("GET", "/api/state")[1]["model"] is None


# ---------------------------------------------------------------- file names


HOSTILE_NAMES = ["../../../escape{}", "..\\..\\escape{}", "..%2F..%2Fescape{}", "/tmp/escape{}",
                 "C:\\Windows\\escape{}", "escape\x00{}", "escape\n{}", "." * 40 + "escape{}", "e" * 5000 + "{}",
                 "%2e%2e%2fescape{}", "ｅｓｃａｐｅ{}", "escape{}/.", "escape{}.."]


@pytest.mark.parametrize("kind, suffix", [("model", ".onnx"), ("dataset", ".png"), ("infer", ".png")])
def test_file_names_cannot_leave_the_session_folder(gui, client, tiny, kind, suffix):
    if kind == "infer":
        built(client, tiny)
    work = Path(gui.settings.workdir)
    outside = files_under(work.parent)
    body = tiny.read_bytes() if kind == "model" else png(np.full((16, 16, 3), 7, np.uint8))
    root = session_root(gui, client)
    for template in HOSTILE_NAMES:
        name = template.format(suffix)
        path = "infer" if kind == "infer" else f"{kind}/upload"
        status, r = client.json("POST", f"/api/{path}?filename={quote(name)}", body,
                                headers={"Content-Type": "application/octet-stream"})
        assert status in (200, 400), (name, status, r)
        if status == 400:
            assert "not accepted" in r["error"] or "type" in r["error"], (name, r)
    # everything written is inside this session's folder, under a short plain name
    new_outside = [f for f in files_under(work.parent) if f not in outside and not f.startswith(f"work/{root.name}/")]
    assert new_outside == []
    for f in files_under(root):
        name = Path(f).name
        assert len(name) <= 100 + len("infer-") and "\x00" not in f and "\n" not in f and ".." not in name, f
    listed = client.json("GET", "/api/state")[1]
    assert "escape" in json.dumps(listed) or kind == "infer"


# ---------------------------------------------------------------- Host and Origin


def refusal(host_setting: str, method: str, host, origin=None):
    guard = GuardMiddleware(None, GuiSettings(workdir=Path("/nonexistent"), host=host_setting, port=8000))
    headers = {} if host is None else {"host": host}
    if origin is not None:
        headers["origin"] = origin
    found = guard.refusal(method, headers)
    return found[0] if found else None


@pytest.mark.parametrize("host, status", [
    ("127.0.0.1:8000", None), ("localhost:8000", None), ("[::1]:8000", None), ("evil.example:8000", 421),
    ("127.0.0.1.evil.example:8000", 421), ("evil@127.0.0.1:8000", None), ("127.0.0.1@evil.example", 421),
    (None, 421), ("", 421), ("LOCALHOST:8000", None),
])
def test_host_check_on_loopback(host, status):
    assert refusal("127.0.0.1", "GET", host) == status


@pytest.mark.parametrize("host, status", [
    ("192.168.1.20:8000", None), ("10.0.0.5", None), ("[fe80::1]:8000", None), ("localhost:8000", None),
    (f"{socket.gethostname()}:8000", None), ("rebind.evil.example:8000", 421), ("evil.example", 421),
])
def test_host_check_on_every_interface_refuses_domain_names(host, status):
    """Bound to 0.0.0.0 the GUI takes any IP address, but a rebinding page sends its own domain name as Host."""
    assert refusal("0.0.0.0", "GET", host) == status


@pytest.mark.parametrize("origin, status", [
    ("http://127.0.0.1:8000", None), ("http://evil.example", 403), ("null", 403), (None, 403),
    ("https://127.0.0.1:8000", 403), ("http://127.0.0.1:8001", 403), ("http://127.0.0.1:8000.evil.example", 403),
    ("http://127.0.0.1:8000@evil.example", 403), ("http://localhost:8000", 403), ("file://", 403),
])
def test_origin_check_on_state_changing_requests(origin, status):
    assert refusal("127.0.0.1", "POST", "127.0.0.1:8000", origin) == status
    assert refusal("127.0.0.1", "GET", "127.0.0.1:8000", origin) is None  # reads change nothing


def test_a_rebinding_page_is_refused_end_to_end(gui, client, tiny):
    """A page on evil.example re-pointed at 127.0.0.1 sends Host and Origin that agree with each other; the Host
    check refuses it before the Origin check could pass it, and nothing changes."""
    evil = f"evil.example:{client.port}"
    status, r = client.json("POST", "/api/model/path", {"path": str(tiny)}, origin=f"http://{evil}",
                            headers={"Host": evil})
    assert status == 421 and "not this GUI" in r["error"]
    status, _, _ = client.request("GET", "/", headers={"Host": evil})
    assert status == 421
    assert client.json("GET", "/api/state")[1]["model"] is None


# ---------------------------------------------------------------- sessions at the same time


def test_sessions_working_at_the_same_time_stay_apart(gui, tiny):
    from openrknn.package import read_package

    with ThreadPoolExecutor(8) as pool:
        clients = list(pool.map(lambda _: Client(gui.url).open_session(), range(24)))
    assert len({c.cookie for c in clients}) == 24
    workers = clients[:3]
    means = [10.0, 20.0, 30.0]

    def convert(i: int) -> dict:
        c = workers[i]
        assert upload(c, "model", "tiny.onnx", tiny.read_bytes())[0] == 200
        status, r = c.json("POST", "/api/build", {"config": {"mean_values": str(means[i])}, "output_name": "mine.rknn"})
        assert status == 200, r
        # the same session cannot queue a second build over the first
        again = c.json("POST", "/api/build", {"config": {}})
        events = c.events(r["job_id"])
        return {"again": again, "events": events, "data": c.request("GET", "/api/download/mine.rknn")[2]}

    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(convert, range(3)))
    for i, res in enumerate(results):
        assert res["again"][0] == 409 and "already running" in res["again"][1]["error"]
        assert res["events"][-1]["state"] == "done"
        path = Path(gui.settings.workdir) / f"check{i}.rknn"
        path.write_bytes(res["data"])
        assert read_package(path).metadata["inputs"][0]["preprocess"]["mean"] == [means[i]] * 3
    # each session sees its own files and jobs only
    assert clients[5].request("GET", "/api/download/mine.rknn")[0] == 404
    state = clients[5].json("GET", "/api/state")[1]
    assert state["model"] is None and state["result"] is None


def test_uploads_into_one_session_at_the_same_time_do_not_mix(gui, client):
    """Eight images of the same name streamed into one session at once: the last complete one wins whole (uploads
    are written to a temp file and renamed), never a mix."""
    images = [png(np.full((32, 32, 3), 30 * i, np.uint8)) for i in range(8)]
    barrier = threading.Barrier(8)

    def send(data: bytes):
        barrier.wait()
        return upload(client, "dataset", "same.png", data)[0]

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(send, images)) == [200] * 8
    stored = (session_root(gui, client) / "calibration" / "same.png").read_bytes()
    assert stored in images
    assert client.json("GET", "/api/state")[1]["dataset"]["count"] == 1
