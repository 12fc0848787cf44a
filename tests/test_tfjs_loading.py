"""load_tfjs: a TensorFlow.js graph model (model.json + .bin shards) against TensorFlow.js itself (its outputs on the
same generated files, stored by `python bench/tfjs_models.py --refs`), through the API, and its bad inputs."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx.numpy_helper
import onnxruntime as ort
import pytest

import loader_models as lm
from openrknn.api import RKNN
from openrknn.convert.loaders import load_model, model_kind
from openrknn.errors import ModelLoadError
from openrknn.frontends.builder import UnsupportedLayer
from openrknn.frontends.tfjs import load_tfjs
from openrknn.metrics import cosine

REF = Path(__file__).resolve().parent / "data" / "loaders" / "tiny_tfjs.npz"


def _write(folder: Path, graph=None, storage=None) -> Path:
    return lm.write_tfjs(folder, graph or lm.tiny_tfjs_graph(), lm.TINY_TFJS_STORAGE if storage is None else storage)


def _run(model, x):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})


def _check_against_tensorflow_js(model: Path, ref_name: str, input_shape) -> None:
    """Our ONNX of ``model`` against TensorFlow.js's outputs stored in tests/data/loaders/<ref_name>.npz, computed
    on these exact bytes (`python bench/tfjs_models.py --refs` writes them)."""
    ref = np.load(REF.with_name(f"{ref_name}.npz"))
    h = hashlib.sha256()
    for f in [model, *sorted(model.parent.glob("*.bin"))]:
        h.update(f.read_bytes())
    assert str(ref["sha256"]) == h.hexdigest(), "regenerate tests/data/loaders (bench/tfjs_models.py --refs)"
    outs = _run(load_tfjs(model).model, lm.reference_input(input_shape))
    for k, got in enumerate(outs):
        want = ref[f"out{k}"]
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * max(1.0, float(np.abs(want).max())))


def test_matches_tensorflow_js(tmp_path):
    model = _write(tmp_path / "tiny")
    loaded = load_tfjs(model)
    assert loaded.framework == "tfjs" and loaded.input_names == ["input"] and loaded.input_shapes == [[1, 12, 12, 3]]
    assert loaded.output_names == ["map", "probs"]
    _check_against_tensorflow_js(model, "tiny_tfjs", (1, 12, 12, 3))


def test_decoder_ops_match_tensorflow_js(tmp_path):
    """Conv2DBackpropInput, DepthToSpace, StridedSlice (masks, shrink, a backward step), a Reshape target computed
    from Shape (folded to a constant: no shape arithmetic left in the graph), Sum, Unpack, ExpandDims, Cast."""
    model = lm.write_tfjs(tmp_path / "dec", lm.tiny_tfjs_decoder(), {})
    ops = {n.op_type for n in load_tfjs(model).model.graph.node}
    assert "ConvTranspose" in ops and "DepthToSpace" in ops and not ops & {"Shape", "ReduceProd", "Gather"}
    _check_against_tensorflow_js(model, "tiny_tfjs_decoder", (1, 6, 6, 4))


def test_tensor_ops_match_tensorflow_js(tmp_path):
    """SplitV, Split, Slice, GatherV2, Tile, Floor, Min and BatchMatMulV2 (a constant operand, adj_x) on a conv's
    output, which the loader holds NCHW: each axis mapped onto it."""
    model = lm.write_tfjs(tmp_path / "ops", lm.tiny_tfjs_tensor_ops(), {})
    _check_against_tensorflow_js(model, "tiny_tfjs_tensor_ops", (1, 8, 8, 6))


def test_atrous_convs_match_tensorflow_js(tmp_path):
    """SpaceToBatchND -> conv -> BatchToSpaceND becomes one dilated conv (VALID inside, and a SAME depthwise one, on
    an odd size padded up and cropped back)."""
    model = lm.write_tfjs(tmp_path / "atrous", lm.tiny_tfjs_atrous(), {})
    convs = [n for n in load_tfjs(model).model.graph.node if n.op_type == "Conv"]
    assert len(convs) == 2 and all(list(a.ints) == [2, 2] for n in convs for a in n.attribute if a.name == "dilations")
    _check_against_tensorflow_js(model, "tiny_tfjs_atrous", (1, 9, 9, 3))


def test_quantized_weights_read_back_as_stored(tmp_path):
    """float16 and uint8 (min + q * scale) weights give the values TensorFlow.js computes with, not the originals."""
    plain = load_tfjs(_write(tmp_path / "f32", storage={}))
    packed = load_tfjs(_write(tmp_path / "q"))
    x = lm.reference_input((1, 12, 12, 3))
    a, b = _run(plain.model, x), _run(packed.model, x)
    assert not np.allclose(a[0], b[0], atol=1e-6)  # the stored forms round the weights
    assert cosine(a[0], b[0]) > 0.999
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in packed.model.graph.initializer}
    dense = next(v for k, v in inits.items() if "dense" in k and v.ndim == 2)
    spec = next(w for w in json.loads((tmp_path / "q" / "model.json").read_text())["weightsManifest"][0]["weights"]
                if w["name"] == "dense/kernel")
    steps = (dense - spec["quantization"]["min"]) / spec["quantization"]["scale"]
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-3)  # every value on the uint8 grid


def test_api_float_and_int8_and_load_model(tmp_path):
    model = _write(tmp_path / "tiny")
    assert model_kind(model) == "tfjs" and load_model(model).output_names == ["map", "probs"]
    rng = np.random.default_rng(7)
    for i in range(6):
        np.save(tmp_path / f"c{i}.npy", rng.integers(0, 256, (12, 12, 3)).astype(np.uint8))
    (tmp_path / "ds.txt").write_text("".join(f"c{i}.npy\n" for i in range(6)))
    img = rng.integers(0, 256, (1, 12, 12, 3)).astype(np.uint8)
    ref = _run(load_tfjs(model).model, (img.astype(np.float32) - 127.5) / 127.5)
    for dtype in (None, "w8a8"):
        r = RKNN()
        assert r.config(mean_values=[127.5] * 3, std_values=[127.5] * 3, target_platform="rk3588",
                        **({"quantized_dtype": dtype} if dtype else {})) == 0
        assert r.load_tfjs(str(model)) == 0, r.last_error
        assert r.build(do_quantization=dtype is not None, dataset=str(tmp_path / "ds.txt")) == 0, r.last_error
        assert r.init_runtime() == 0
        outs = r.inference([img])
        for got, want in zip(outs, ref):
            assert cosine(np.ravel(got), np.ravel(want)) >= (0.99 if dtype else 0.99999)
        r.release()


def test_inputs_and_outputs_cut_the_graph(tmp_path):
    """outputs= stops before ops the loader does not map (a decode after the heads); inputs= starts after them."""
    g = lm.tiny_tfjs_graph()
    g.node("TopKV2", "topk", ["probs", g.const("topk/k", np.array(2, np.int32))])
    model = _write(tmp_path / "m", g)
    with pytest.raises(UnsupportedLayer, match=r"'topk' of type TopKV2 .*outputs=\['probs'\]"):
        load_tfjs(model)  # the refusal names the cut that deploys everything before the unmapped op
    cut = load_tfjs(model, outputs=["probs"])
    assert cut.output_names == ["probs"]
    mid = load_tfjs(model, inputs=["conv/Relu"], input_size_list=[[1, 12, 12, 8]], outputs=["probs"])
    assert mid.input_shapes == [[1, 12, 12, 8]]


def test_bounds_computed_at_run_time_are_refused_by_name(tmp_path):
    """A Slice whose start the input decides (no constant to fold) is refused naming the layer and the cut."""
    g = lm.tiny_tfjs_graph()
    i32 = lambda *v: np.array(v, np.int32)  # noqa: E731
    low = g.node("Min", "dyn/low", ["input", g.const("dyn/axes", i32(0, 1, 2, 3))], keep_dims=False)
    low = g.node("Reshape", "dyn/one", [low, g.const("dyn/shape", i32(1))])
    start = g.node("Tile", "dyn/four", [low, g.const("dyn/reps", i32(4))])
    start = g.node("Cast", "dyn/int", [start])
    g.nodes[-1].attr["SrcT"].type, g.nodes[-1].attr["DstT"].type = 1, 3
    g.node("Slice", "dyn/crop", ["input", start, g.const("dyn/size", i32(1, 4, 4, 3))])
    model = _write(tmp_path / "dyn", g)
    with pytest.raises(UnsupportedLayer, match=r"'dyn/crop' of type Slice with bounds computed at run time"):
        load_tfjs(model, outputs=["dyn/crop"])


def test_while_loops_are_refused_not_followed(tmp_path):
    """TF1 control flow (Enter / Merge / NextIteration) makes the graph cyclic: the loader names the loop and how to
    start after it, rather than following the cycle for ever."""
    g = lm.tiny_tfjs_graph()
    one = g.const("loop/one", np.array(1.0, np.float32))
    g.node("Enter", "loop/enter", ["probs"])
    g.node("Merge", "loop/merge", ["loop/enter", "loop/next"])
    g.node("AddV2", "loop/add", ["loop/merge", one])
    g.node("NextIteration", "loop/next", ["loop/add"])
    g.node("Exit", "loop/exit", ["loop/merge"])
    g.node("AddV2", "ring/a", ["ring/b", one])  # a cycle without loop ops: refused the same way
    g.node("AddV2", "ring/b", ["ring/a", one])
    model = _write(tmp_path / "loop", g)
    for out in ("loop/exit", "loop/add", "ring/a"):
        with pytest.raises(UnsupportedLayer, match="a while loop.*inputs="):
            load_tfjs(model, outputs=[out])
    assert load_tfjs(model, outputs=["probs"]).output_names == ["probs"]


def test_signature_gives_the_size_a_placeholder_leaves_open(tmp_path):
    g = lm.tiny_tfjs_graph()
    g.nodes[0].attr["shape"].shape.dim[1].size = -1  # [-1, -1, 12, 3]
    model = _write(tmp_path / "sig", g)
    with pytest.raises(ModelLoadError, match="give input_size_list"):
        load_tfjs(model)
    doc = json.loads(model.read_text())
    doc["signature"] = {"inputs": {"input:0": {"name": "input:0", "dtype": "DT_FLOAT", "tensorShape": {
        "dim": [{"size": "-1"}, {"size": "12"}, {"size": "12"}, {"size": "3"}]}}}}
    model.write_text(json.dumps(doc))
    assert load_tfjs(model).input_shapes == [[1, 12, 12, 3]]


def test_bad_files_say_what_to_do(tmp_path):
    model = _write(tmp_path / "ok")
    with pytest.raises(ModelLoadError, match="not found"):
        load_tfjs(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="not a TensorFlow.js model.json"):
        load_tfjs(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text('{"name": "a package.json"}')
    with pytest.raises(ModelLoadError, match="not a TensorFlow.js model"):
        load_tfjs(tmp_path / "other.json")
    doc = json.loads(model.read_text())
    layers = dict(doc, format="layers-model", modelTopology={"class_name": "Sequential", "model_config": {}})
    (tmp_path / "layers.json").write_text(json.dumps(layers))
    with pytest.raises(ModelLoadError, match="topology is not a Keras Model or Sequential"):
        load_tfjs(tmp_path / "layers.json")
    (tmp_path / "ok" / "group1-shard2of2.bin").unlink()
    with pytest.raises(ModelLoadError, match="'group1-shard2of2.bin', which is not beside it"):
        load_tfjs(model)
    (tmp_path / "ok" / "group1-shard2of2.bin").write_bytes(b"\0" * 8)
    with pytest.raises(ModelLoadError, match="weight files end before weight"):
        load_tfjs(model)
    model = _write(tmp_path / "str")
    doc = json.loads(model.read_text())
    next(w for w in doc["weightsManifest"][0]["weights"] if w["name"] == "conv/bias")["dtype"] = "string"
    model.write_text(json.dumps(doc))
    with pytest.raises(ModelLoadError, match="stored as string"):
        load_tfjs(model)
    # a manifest that names files outside the model's folder, or entries that are not weight specs
    for edit, why in ((lambda d: d["weightsManifest"][0].__setitem__("paths", ["../../etc/hostname"]),
                       "not a file name inside the model's folder"),
                      (lambda d: d["weightsManifest"][0].__setitem__("paths", ["/etc/hostname"]),
                       "not a file name inside the model's folder"),
                      (lambda d: d["weightsManifest"][0]["weights"][0].__setitem__("shape", [-3, 3]),
                       "not a weight spec"),
                      (lambda d: d["weightsManifest"][0]["weights"][0].pop("name"), "not a weight spec"),
                      (lambda d: next(w for w in d["weightsManifest"][0]["weights"] if w["name"] == "dw/kernel")
                       ["quantization"].pop("scale"), "without a numeric min and scale"),
                      (lambda d: d.__setitem__("weightsManifest", {}), "not a list of weight groups"),
                      (lambda d: d["modelTopology"]["node"].append(5), "not a TensorFlow GraphDef")):
        model = _write(tmp_path / "hostile")
        doc = json.loads(model.read_text())
        edit(doc)
        model.write_text(json.dumps(doc))
        with pytest.raises(ModelLoadError, match=why):
            load_tfjs(model)
    # through the API: the vendor's failure code and the message kept
    r = RKNN()
    assert r.load_tfjs(str(tmp_path / "bad.json")) == -1 and "model.json" in str(r.last_error)
