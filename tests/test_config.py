"""config() validation: every bad value names the key, the value seen and the allowed values; a failed config() makes
a later build() fail instead of silently using defaults."""

from __future__ import annotations

import pytest

from conftest import write_npy_dataset
from openrknn.api import RKNN
from openrknn.config import KNOWN_KEYS, make_config
from openrknn.errors import ConfigError
from openrknn.targets import PLATFORMS, QUANTIZED_DTYPES


def _err(**kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        make_config(**kwargs)
    return str(info.value)


# ---------------------------------------------------------------- accepted values


def test_defaults_and_seed_values_are_accepted():
    cfg = make_config()
    assert cfg.target_platform == ["rk1808"] and cfg.quantized_dtype == "asymmetric_quantized-u8"
    assert cfg.mean_values is None and cfg.std_values is None and cfg.reorder_channel is None
    seed = make_config(reorder_channel="2 1 0", mean_values=[[123.675, 116.28, 103.53]],
                       std_values=[[58.395, 57.12, 57.375]], optimization_level=3, target_platform="rk1808",
                       quantize_input_node=False, batch_size=200, output_optimize=1, force_builtin_perm=False)
    assert seed.reorder_channel == [[2, 1, 0]]
    assert seed.mean_values == [[123.675, 116.28, 103.53]] and seed.std_values == [[58.395, 57.12, 57.375]]
    assert (seed.optimization_level, seed.batch_size, seed.output_optimize) == (3, 200, 1)


def test_flat_and_per_input_mean_forms_are_the_same():
    assert make_config(mean_values=[1, 2, 3]).mean_values == make_config(mean_values=[[1, 2, 3]]).mean_values


def test_per_input_reorder_and_target_forms():
    cfg = make_config(reorder_channel="2 1 0#0", target_platform=["RK3588", "rk3566"])
    assert cfg.reorder_channel == [[2, 1, 0], [0]]
    assert cfg.target_platform == ["rk3588", "rk3566"] and cfg.quantized_dtype == "w8a8"


@pytest.mark.parametrize("level", [0, 1, 2, 3])
def test_every_optimization_level_is_accepted(level):
    assert make_config(optimization_level=level).optimization_level == level


# ---------------------------------------------------------------- rejected values


def test_unknown_key_names_it_and_lists_the_known_keys():
    msg = _err(mean_value=[0, 0, 0])  # the classic typo
    assert "mean_value=[0, 0, 0]" in msg
    for key in ("mean_values", "std_values", "reorder_channel", "target_platform", "quantized_dtype"):
        assert repr(key) in msg
    assert set(KNOWN_KEYS) >= {"mean_values", "quantize_input_node", "force_builtin_perm", "quant_img_RGB2BGR"}


@pytest.mark.parametrize("key, value, allowed", [
    ("optimization_level", "3", "0..3"),
    ("optimization_level", 2.0, "0..3"),
    ("batch_size", 1.5, "integer"),
    ("batch_size", True, "integer"),
    ("quantize_input_node", "yes", "True or False"),
    ("output_optimize", 2, "True or False"),
    ("mean_values", "123.675", "list"),
    ("mean_values", [1, [2, 3]], "do not mix"),
    ("std_values", [[1, "a", 3]], "numbers only"),
    ("reorder_channel", [2, 1, 0], "'2 1 0'"),
    ("target_platform", 1808, "'rk1808'"),
    ("quantized_algorithm", "minmax", "'kl_divergence'"),
    ("quantized_method", "tensor", "'channel'"),
    ("weight_rounding", "stochastic", "'gptq'"),
    ("range_remap", "no", "True or False"),
    ("range_split", "no", "True or False"),
])
def test_wrong_type_or_value_names_key_value_and_allowed(key, value, allowed):
    msg = _err(**{key: value})
    assert f"{key}={value!r}" in msg
    assert allowed in msg


def test_std_zero_is_refused():
    msg = _err(std_values=[[1, 0, 1]])
    assert "std_values" in msg and "divide by zero" in msg


@pytest.mark.parametrize("order, why", [
    ("0 1 1", "not a permutation"),
    ("2 1 x", "not an integer"),
    ("1 2 3", "not a permutation"),
    ("", "not a permutation"),
])
def test_bad_reorder_string(order, why):
    msg = _err(reorder_channel=order)
    assert f"reorder_channel={order!r}" in msg
    assert "'0 1 2'" in msg and "'2 1 0'" in msg and why in msg


def test_unknown_target_lists_the_platforms():
    msg = _err(target_platform="rk9999")
    assert "target_platform='rk9999'" in msg
    for name in PLATFORMS:
        assert repr(name) in msg


def test_targets_of_two_npu_generations_are_refused():
    msg = _err(target_platform=["rk1808", "rk3588"])
    assert "target_platform" in msg and "generation" in msg


@pytest.mark.parametrize("target, dtype", [("rk1808", "w8a8"), ("rk3588", "asymmetric_quantized-u8")])
def test_dtype_of_the_other_npu_generation(target, dtype):
    msg = _err(target_platform=target, quantized_dtype=dtype)
    assert f"quantized_dtype={dtype!r}" in msg
    gen = "rknpu1" if target == "rk1808" else "rknpu2"
    for allowed in QUANTIZED_DTYPES[gen]:
        assert repr(allowed) in msg
    assert "other NPU generation" in msg


def test_unknown_dtype():
    msg = _err(quantized_dtype="int4")
    assert "quantized_dtype='int4'" in msg and "'asymmetric_quantized-u8'" in msg


@pytest.mark.parametrize("level", [-1, 4, 10])
def test_optimization_level_out_of_range(level):
    msg = _err(optimization_level=level)
    assert f"optimization_level={level}" in msg and "0..3" in msg


# ---------------------------------------------------------------- through the facade


def test_failed_config_returns_minus_one_and_logs_the_key(rknn_log, logged_errors):
    rknn = RKNN()
    assert rknn.config(reorder_channel="2 1 9") == -1
    errors = logged_errors(rknn_log)
    assert errors and "reorder_channel='2 1 9'" in errors[-1]
    assert isinstance(rknn.last_error, ConfigError)
    rknn.release()


def test_failed_config_makes_a_later_build_fail(conv_onnx, rknn_log, logged_errors):
    rknn = RKNN()
    assert rknn.config(mean_values=[0, 0, 0], target_platform="rk9999") == -1
    assert rknn.load_onnx(str(conv_onnx())) == 0
    assert rknn.build(do_quantization=False) == -1
    assert "config() failed earlier" in logged_errors(rknn_log)[-1]
    assert rknn.export_rknn(str(conv_onnx().with_suffix(".rknn"))) == -1  # nothing was built
    # a good config() clears the failure
    assert rknn.config(mean_values=[0, 0, 0]) == 0
    assert rknn.build(do_quantization=False) == 0
    rknn.release()


@pytest.mark.parametrize("key, values", [
    ("mean_values", [[1.0, 2.0]]),
    ("std_values", [[1.0, 2.0, 3.0, 4.0]]),
    ("reorder_channel", "1 0"),
])
def test_mean_std_reorder_length_is_checked_against_the_model_at_build(conv_onnx, rknn_log, logged_errors, key,
                                                                       values):
    rknn = RKNN()
    assert rknn.config(**{key: values}) == 0  # the channel count is unknown until a model is loaded
    assert rknn.load_onnx(str(conv_onnx(cin=3))) == 0
    assert rknn.build(do_quantization=False) == -1
    msg = logged_errors(rknn_log)[-1]
    assert key in msg and "3 channels" in msg
    shown = values[0] if isinstance(values, list) else [int(v) for v in values.split()]
    assert repr(shown) in msg
    rknn.release()


def test_one_mean_list_for_a_two_input_model_is_refused(two_input_onnx, rknn_log, logged_errors):
    rknn = RKNN()
    assert rknn.config(mean_values=[[0, 0, 0]]) == 0
    assert rknn.load_onnx(str(two_input_onnx)) == 0
    assert rknn.build(do_quantization=False) == -1
    assert "2 inputs" in logged_errors(rknn_log)[-1]
    rknn.release()


def test_single_value_mean_applies_to_every_channel(two_input_onnx):
    rknn = RKNN()
    assert rknn.config(mean_values=[[0, 0, 0], [5]], std_values=[[1], [2]]) == 0
    assert rknn.load_onnx(str(two_input_onnx)) == 0
    assert rknn.build(do_quantization=False) == 0
    rknn.release()


def test_config_and_quantizer_spell_host_sigmoid_heads_alike():
    """config.py keeps its own copy of the quantizer's choices (it does not import the quantizer): they must agree."""
    from openrknn.config import HOST_SIGMOID_HEADS
    from openrknn.quant import HOST_SIGMOID_HEADS as QUANT_HEADS

    assert HOST_SIGMOID_HEADS == QUANT_HEADS
    assert make_config().host_sigmoid_heads == "auto"


def test_weight_rounding_reaches_the_quantizer(conv_onnx, tmp_path):
    """openrknn's weight_rounding option: the same names as the quantizer's, and a build reports the method used."""
    from openrknn.config import WEIGHT_ROUNDINGS
    from openrknn.quant import WEIGHT_ROUNDINGS as QUANT_ROUNDINGS

    assert WEIGHT_ROUNDINGS == QUANT_ROUNDINGS
    assert make_config().weight_rounding == "auto"
    dataset = write_npy_dataset(tmp_path, (8, 10, 3), n=3, seed=0)
    for rounding, algorithm, expect in (("gptq", "normal", "gptq"), ("auto", "mmse", "gptq"),
                                        ("nearest", "mmse", None)):
        r = RKNN()
        assert r.config(target_platform="rk3588", quantized_algorithm=algorithm, weight_rounding=rounding) == 0
        assert r.load_onnx(str(conv_onnx())) == 0
        assert r.build(do_quantization=True, dataset=str(dataset)) == 0
        assert r._build.quant_report.get("weight_rounding", {}).get("method") == expect
        assert r._build.package.metadata["quantization"]["weight_rounding"] == (expect or "nearest")  # in the file


def test_range_split_and_remap_reach_the_quantizer(conv_onnx, tmp_path, monkeypatch):
    """openrknn's range_split / range_remap options (default on) are the quantizer's QuantOptions fields."""
    import openrknn.quant as quant

    seen = []
    real = quant.quantize
    monkeypatch.setattr(quant, "quantize", lambda model, data, opts, *a, **k: seen.append(opts) or
                        real(model, data, opts, *a, **k))
    assert make_config().range_remap is True and make_config().range_split is True
    dataset = write_npy_dataset(tmp_path, (8, 10, 3), n=2, seed=0)
    for key, value in (("range_remap", True), ("range_remap", False), ("range_split", False)):
        r = RKNN()
        assert r.config(target_platform="rk3588", **{key: value}) == 0
        assert r.load_onnx(str(conv_onnx())) == 0
        assert r.build(do_quantization=True, dataset=str(dataset)) == 0
        assert getattr(seen[-1], key) is value
        assert r._build.package.metadata["quantization"][key] is value
