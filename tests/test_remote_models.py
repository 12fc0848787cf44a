"""Real models on the runtime server: YOLOX-nano (ONNX) and MobileNetV2 (TorchScript), float builds through the public
API, run on a server subprocess over loopback, must equal the local simulator bit for bit on real photos."""

from __future__ import annotations

import numpy as np
import pytest
from test_remote_support import ServerProcess, build_float_rknn, outputs_equal

from openrknn.api import RKNN

pytestmark = pytest.mark.slow  # real models through a server process

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = ServerProcess(tmp_path_factory.mktemp("models_server"))
    yield srv
    srv.stop()


def photos(real_data, size, n=3):
    import cv2

    files = sorted(real_data("images/coco").glob("*.jpg"))[:n]
    assert files, f"no photos in {real_data('images/coco')}"
    return [cv2.resize(cv2.imread(str(f)), (size, size), interpolation=cv2.INTER_AREA) for f in files]


def local_and_remote(rknn_path, inputs, port):
    local, remote = RKNN(), RKNN()
    try:
        assert local.load_rknn(str(rknn_path)) == 0 and local.init_runtime() == 0
        assert remote.load_rknn(str(rknn_path)) == 0
        assert remote.init_runtime(target="rk1808", device_id=f"127.0.0.1:{port}") == 0, remote.last_error
        return [(local.inference(inputs=[x]), remote.inference(inputs=[x])) for x in inputs]
    finally:
        local.release()
        remote.release()


@pytest.mark.parametrize("model", ["yolox_nano", "mobilenet_v2"])
def test_real_model_outputs_equal_the_local_simulator_bit_for_bit(model, server, real_data, tmp_path,
                                                                  monkeypatch):
    monkeypatch.setenv("OPENRKNN_TOKEN", server.token)
    monkeypatch.setenv("OPENRKNN_DEVICES", str(tmp_path / "no-devices.json"))
    if model == "yolox_nano":
        rknn = build_float_rknn(real_data("models/yolox_nano_coco.onnx"), tmp_path / "yolox.rknn")
        size = 416
    else:
        pytest.importorskip("torch")
        rknn = build_float_rknn(real_data("models/mobilenet_v2_imagenet.pt"), tmp_path / "mbv2.rknn",
                                input_size_list=[[3, 224, 224]])
        size = 224
    inputs = photos(real_data, size) + [np.random.default_rng(0).integers(0, 256, (size, size, 3), np.uint8)]
    for local, remote in local_and_remote(rknn, inputs, server.port):
        assert local is not None and remote is not None
        assert outputs_equal(local, remote)
        assert np.isfinite(remote[0]).all() and np.abs(remote[0]).max() > 0  # a real result, not zeros
