"""The pieces of channel Concats that BatchNorms read are standardised where they are made, and the BatchNorms
rescaled (graph/fold.normalize_concat_pieces): DenseNet's dense layers each normalise the block's growing Concat,
whose one int8 scale is set by its widest pieces, so a narrow piece's rounding error was multiplied by its large
gamma / std. The rewrite is exact in float; the factors go into the convs that make the pieces (no new op); on int8
the narrow pieces keep their precision; a CSP block's BatchNorm (the one reader of a Concat of two convs) goes into
those convs whole."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import built_rknn, ort_run, write_samples
from openrknn.graph import fold
from openrknn.graph.optimize import optimize
from openrknn.metrics import cosine

n = helper.make_node
RNG = np.random.default_rng(7)


def _graph(nodes, inits, out="y", in_shape=(1, 3, 8, 8)):
    return helper.make_graph(nodes, "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))],
                             [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)],
                             [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()])


def _bn(name: str, channels: int, spread: np.ndarray = None) -> dict:
    """A BatchNorm's parameters; ``spread``: the channels' standard deviations (its running variances)."""
    std = RNG.uniform(0.2, 3.0, channels) if spread is None else spread
    return {f"{name}_g": RNG.uniform(0.5, 1.5, channels), f"{name}_b": RNG.normal(0, 0.3, channels),
            f"{name}_m": RNG.normal(0, 0.5, channels), f"{name}_v": std ** 2}


def _bn_node(name: str, x: str, y: str):
    return n("BatchNormalization", [x] + [f"{name}_{k}" for k in "gbmv"], [y], name=name)


def _dense_block(nested: bool, spread=None, spatial: int = 8):
    """x -> stem conv (6 ch) -> two dense layers (BN -> Relu -> conv, 4 new channels each), then a transition BN:
    Keras writes the growing Concat nested (Concat(Concat(a, b), c)), torchvision flat (Concat(a, b, c))."""
    inits = {"w0": RNG.normal(0, 0.4, (6, 3, 3, 3)), "w1": RNG.normal(0, 0.3, (4, 6, 3, 3)),
             "w2": RNG.normal(0, 0.3, (4, 10, 3, 3))}
    inits.update(_bn("bn1", 6, None if spread is None else spread[:6]))
    inits.update(_bn("bn2", 10, None if spread is None else spread[:10]))
    inits.update(_bn("bn3", 14, spread))
    nodes = [n("Conv", ["x", "w0"], ["a"], pads=[1] * 4),
             _bn_node("bn1", "a", "n1"), n("Relu", ["n1"], ["r1"]), n("Conv", ["r1", "w1"], ["b"], pads=[1] * 4),
             n("Concat", ["a", "b"], ["ab"], axis=1),
             _bn_node("bn2", "ab", "n2"), n("Relu", ["n2"], ["r2"]), n("Conv", ["r2", "w2"], ["c"], pads=[1] * 4),
             n("Concat", ["ab", "c"] if nested else ["a", "b", "c"], ["abc"], axis=1),
             _bn_node("bn3", "abc", "y")]
    model = helper.make_model(_graph(nodes, inits, in_shape=(1, 3, spatial, spatial)),
                              opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def _copy(m):
    c = onnx.ModelProto()
    c.CopyFrom(m)
    return c


@pytest.mark.parametrize("nested", [True, False])
def test_a_dense_blocks_pieces_are_standardised_at_their_convs(nested):
    m = _dense_block(nested)
    out = _copy(m)
    assert fold.normalize_concat_pieces(out) == 3  # a (read by the three BatchNorms), b (two), c (bn3 alone)
    x = RNG.normal(0, 1, (1, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(ort_run(out, {"x": x})[0], ort_run(m, {"x": x})[0], rtol=1e-4, atol=1e-4)
    producers = {o: node for node in out.graph.node for o in node.output}
    shift = producers[producers["n1"].input[0]]  # bn1 reads a standardised by bn1's own statistics
    scale = producers[shift.input[0]]
    assert (shift.op_type, scale.op_type, scale.input[0]) == ("Add", "Mul", "a")
    std = np.sqrt(numpy_helper.to_array(next(t for t in m.graph.initializer if t.name == "bn1_v")) + 1e-5)
    np.testing.assert_allclose(numpy_helper.to_array(next(t for t in out.graph.initializer
                                                          if t.name == scale.input[1])).ravel(), 1 / std, rtol=1e-6)
    slim = optimize(_copy(m), 2)  # each piece's factor goes into the conv making it: no op more than before
    assert sorted(node.op_type for node in slim.graph.node) == sorted(node.op_type for node in m.graph.node)
    np.testing.assert_allclose(ort_run(slim, {"x": x})[0], ort_run(m, {"x": x})[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("pads", [0, 1])
def test_a_pooled_block_input_takes_its_factor_into_the_conv_before_the_pool(pads):
    """A DenseNet transition: conv -> AveragePool makes the next block's first piece. An unpadded pool commutes with
    the piece's scale and shift, so they go into the transition conv (no op added); a padded one averages zeros
    in, which a shift would not commute with: the Mul and Add stay after it."""
    m = _dense_block(True, spatial=16)
    g = m.graph
    assert g.node[0].output[0] == "a"  # the block's first piece: now pooled from a transition conv
    g.initializer.append(numpy_helper.from_array(RNG.normal(0, 0.4, (6, 3, 1, 1)).astype(np.float32), "wt"))
    g.node.remove(g.node[0])
    g.node.insert(0, n("AveragePool", ["t"], ["a"], kernel_shape=[2, 2], strides=[2, 2], pads=[pads] * 4,
                       count_include_pad=1))
    g.node.insert(0, n("Conv", ["x", "wt"], ["t"]))
    out = optimize(_copy(m), 2)
    x = RNG.normal(0, 1, (1, 3, 16, 16)).astype(np.float32)
    np.testing.assert_allclose(ort_run(out, {"x": x})[0], ort_run(m, {"x": x})[0], rtol=1e-4, atol=1e-4)
    added = sorted(node.op_type for node in out.graph.node if node.op_type in ("Mul", "Add"))
    assert added == ([] if pads == 0 else ["Add", "Mul"])


def test_a_csp_blocks_batchnorm_folds_into_its_two_convs():
    """CSP (YOLOv4/v5's BottleneckCSP): BatchNorm(Concat(conv(x), conv(x))) -> Relu: each piece takes its whole
    scale and shift, which fold into its conv, leaving two convs and the Concat."""
    inits = {"wa": RNG.normal(0, 0.4, (4, 3, 1, 1)), "wb": RNG.normal(0, 0.4, (5, 3, 3, 3))}
    inits.update(_bn("bn", 9))
    nodes = [n("Conv", ["x", "wa"], ["a"]), n("Conv", ["x", "wb"], ["b"], pads=[1] * 4),
             n("Concat", ["a", "b"], ["ab"], axis=1), _bn_node("bn", "ab", "n"), n("Relu", ["n"], ["y"])]
    m = helper.make_model(_graph(nodes, inits), opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    out = optimize(_copy(m), 2)
    assert sorted(node.op_type for node in out.graph.node) == ["Concat", "Conv", "Conv", "Relu"]
    x = RNG.normal(0, 1, (1, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(ort_run(out, {"x": x})[0], ort_run(m, {"x": x})[0], rtol=1e-5, atol=1e-5)


INITS = {"wa": RNG.normal(0, 0.4, (4, 3, 1, 1)), "wb": RNG.normal(0, 0.4, (2, 3, 1, 1)),
         "s": RNG.uniform(0.5, 4, (1, 6, 1, 1)), "t": RNG.normal(0, 1, (6, 1, 1)),
         "sp": RNG.uniform(0.5, 4, (1, 1, 8, 8)), "w6": RNG.uniform(0.5, 4, (1, 4, 1, 1)), **_bn("bn", 6)}


def _two_convs(tail, axis=1):
    nodes = [n("Conv", ["x", "wa"], ["a"]), n("Conv", ["x", "wb"], ["b"]),
             n("Concat", ["a", "b"] if axis == 1 else ["a", "a"], ["ab"], axis=axis)] + tail
    m = helper.make_model(_graph(nodes, INITS, out="out"), opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m


@pytest.mark.parametrize("tail", [
    [n("Mul", ["ab", "s"], ["m"]), n("Add", ["m", "t"], ["y"])],   # a Keras BatchNorm as the TensorFlow loaders
    [n("Div", ["ab", "s"], ["m"]), n("Sub", ["m", "t"], ["y"])],   # write it
    [n("Mul", ["ab", "s"], ["y"])]])
def test_a_concats_one_scale_and_shift_goes_into_its_pieces(tail):
    m = _two_convs(tail + [n("Relu", ["y"], ["out"])])
    out = _copy(m)
    assert fold.normalize_concat_pieces(out) == 2
    assert [node.op_type for node in out.graph.node if node.op_type not in ("Mul", "Add")] == \
        ["Conv", "Conv", "Concat", "Relu"]  # the scale and shift after the Concat went
    x = RNG.normal(0, 1, (1, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(ort_run(out, {"x": x})[0], ort_run(m, {"x": x})[0], rtol=1e-5, atol=1e-5)


def test_a_lone_scale_beside_a_batchnorm_gets_the_shift_standardising_adds():
    """Two readers of the Concat, a BatchNorm and a lone Mul: the pieces are standardised by the BatchNorm's
    statistics, so the Mul must now undo a shift too: an Add follows it."""
    m = _two_convs([_bn_node("bn", "ab", "n"), n("Mul", ["ab", "s"], ["k"]), n("Add", ["n", "k"], ["out"])])
    out = _copy(m)
    assert fold.normalize_concat_pieces(out) == 2
    x = RNG.normal(0, 1, (1, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(ort_run(out, {"x": x})[0], ort_run(m, {"x": x})[0], rtol=1e-4, atol=1e-4)


def test_other_readers_other_axes_and_no_statistics_leave_the_concat_alone():
    """A scale varying over space, a Concat along the width, a Concat also read by a Relu (it would see the
    rescaled values), two spelled-out scales (no statistics to standardise by): nothing changes."""
    for m in (_two_convs([n("Mul", ["ab", "sp"], ["out"])]), _two_convs([n("Mul", ["ab", "w6"], ["out"])], axis=3),
              _two_convs([n("Mul", ["ab", "s"], ["m"]), n("Relu", ["ab"], ["r"]), n("Add", ["m", "r"], ["out"])]),
              _two_convs([n("Mul", ["ab", "s"], ["m"]), n("Div", ["ab", "s"], ["d"]), n("Add", ["m", "d"], ["out"])])):
        assert fold.normalize_concat_pieces(_copy(m)) == 0


def test_int8_keeps_a_narrow_piece_that_the_batchnorm_widens(tmp_path, monkeypatch):
    """The stem's 6 channels are wide (std 30) and the dense layers' new ones narrow (std 0.05); each BatchNorm
    brings every channel to unit scale. With one int8 scale over the Concat the narrow channels are a few levels
    wide; standardised where they are made, they span the Concat's scale like the wide ones."""
    spread = np.r_[np.full(6, 30.0), np.full(8, 0.05)]
    m = _dense_block(nested=False, spread=spread, spatial=12)
    for name, shape in (("w0", (6, 3, 3, 3)), ("w1", (4, 6, 3, 3)), ("w2", (4, 10, 3, 3))):
        scale = {"w0": 0.4, "w1": 0.0015, "w2": 0.001}[name]  # the stem wide, the dense layers' outputs narrow
        w = next(t for t in m.graph.initializer if t.name == name)
        w.CopyFrom(numpy_helper.from_array(RNG.normal(0, scale, shape).astype(np.float32), name))
    path = tmp_path / "dense.onnx"
    onnx.save(m, str(path))
    (tmp_path / "calib").mkdir()
    pics = [RNG.uniform(0, 255, (1, 12, 12, 3)).astype(np.float32) for _ in range(8)]
    ds = write_samples(tmp_path / "calib", pics[:6])
    ref = [ort_run(m, {"x": p.transpose(0, 3, 1, 2).copy()})[0] for p in pics[6:]]
    scores = {}
    for standardised in (True, False):
        if not standardised:
            monkeypatch.setattr(fold, "normalize_concat_pieces", lambda model: 0)
        rk = built_rknn(path, ds, target_platform="rk3588", quantized_dtype="w8a8")
        scores[standardised] = min(cosine(rk.inference(inputs=[p])[0], r) for p, r in zip(pics[6:], ref))
        rk.release()
    assert scores[True] > 0.999 and 1 - scores[True] < (1 - scores[False]) / 10, scores


def test_a_tensorflow_batchnorm_after_a_concat_keeps_its_statistics(tmp_path):
    """A frozen graph's FusedBatchNormV3 after a Concat arrives as one BatchNormalization with its mean and variance
    (a Mul and an Add would lose them), so a Keras or TensorFlow DenseNet's Concat pieces can be standardised too;
    after a conv it stays a Mul and an Add computed in float64, which fold into the conv."""
    from loader_models import TFGraph
    from openrknn.convert.loaders import load_tensorflow

    g = TFGraph(5)
    x = g.placeholder("image", [-1, 8, 8, 3])
    a = g.conv_bn_relu6(x, "a", 3, 4, 3, 1)
    b = g.conv_bn_relu6(a, "b", 4, 4, 3, 1)
    cat = g.node("ConcatV2", "cat", [a, b, g.const("cat/axis", np.array(3, np.int32))], N=2)
    stats = {"gamma": RNG.uniform(0.5, 1.5, 8), "beta": RNG.normal(0, 0.1, 8), "mean": RNG.normal(0, 1, 8),
             "var": RNG.uniform(0.01, 4, 8)}
    g.node("FusedBatchNormV3", "output", [cat] + [g.const(f"bn/{p}", v.astype(np.float32)) for p, v in stats.items()],
           epsilon=0.001, is_training=False, data_format="NHWC")
    loaded = load_tensorflow(g.save(tmp_path / "m.pb"), ["image"], [[1, 8, 8, 3]], ["output"])
    bn = [node for node in loaded.model.graph.node if node.op_type == "BatchNormalization"]
    producers = {o: node for node in loaded.model.graph.node for o in node.output}
    assert len(bn) == 1 and producers[bn[0].input[0]].op_type == "Concat"  # the convs' BatchNorms: Mul + Add
    inits = {t.name: numpy_helper.to_array(t) for t in loaded.model.graph.initializer}
    for k, part in enumerate(stats, 1):  # in the channel order of the Concat, which the layout keeps at axis 1
        np.testing.assert_array_equal(inits[bn[-1].input[k]], stats[part].astype(np.float32))
    assert bn[-1].attribute[0].f == np.float32(0.001)
