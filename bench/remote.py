"""Remote runtime over loopback vs the local simulator: per-inference overhead and concurrent clients.

    python bench/remote.py [--iters 200] [--clients 8] [--per-client 200] [--threads 1]

Models (float builds): YOLOX-nano 416x416 from ../shared/data, and a "transport" model with the same input
(416x416x3 uint8) and output ([1,3549,85] float32) sizes but almost no compute, which isolates the protocol's cost.
Local and remote runs are interleaved so that load from other processes hits both alike. Prints tables.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from openrknn.progress import progress_bar as tqdm  # drawn on a terminal only

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"
YOLOX = DATA / "models" / "yolox_nano_coco.onnx"


def transport_onnx(path: Path) -> None:
    """A model with YOLOX-nano's I/O sizes and next to no compute: flatten, slice, reshape."""
    import onnx
    from onnx import TensorProto, helper

    n_out = 3549 * 85
    nodes = [
        helper.make_node("Flatten", ["images"], ["flat"], axis=0),
        helper.make_node("Slice", ["flat", "starts", "ends", "axes"], ["cut"]),
        helper.make_node("Reshape", ["cut", "shape"], ["output"]),
    ]
    inits = [helper.make_tensor("starts", TensorProto.INT64, [1], [0]),
             helper.make_tensor("ends", TensorProto.INT64, [1], [n_out]),
             helper.make_tensor("axes", TensorProto.INT64, [1], [1]),
             helper.make_tensor("shape", TensorProto.INT64, [3], [1, 3549, 85])]
    graph = helper.make_graph(nodes, "transport", [helper.make_tensor_value_info("images", TensorProto.FLOAT,
                                                                                [1, 3, 416, 416])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3549, 85])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def build_float(onnx_path: Path, out: Path) -> Path:
    from openrknn.api import RKNN

    r = RKNN()
    r.config(mean_values=[0, 0, 0], std_values=[1, 1, 1])
    assert r.load_onnx(str(onnx_path)) == 0, f"load_onnx({onnx_path}) failed"
    assert r.build(do_quantization=False) == 0, "build failed"
    assert r.export_rknn(str(out)) == 0
    r.release()
    return out


def stats_ms(times) -> dict:
    a = np.asarray(times) * 1e3
    return {"median": float(np.median(a)), "mean": float(a.mean()), "p90": float(np.percentile(a, 90))}


def interleaved(local, remote, x, iters: int, label: str):
    for _ in range(5):  # warm-up: first runs allocate arenas on both sides
        local.run([x])
        remote.run([x])
    tl, tr, tt = [], [], []
    for _ in tqdm(range(iters), desc=label, leave=False):
        t = time.perf_counter()
        local.run([x])
        tl.append(time.perf_counter() - t)
        t = time.perf_counter()
        remote.run([x])
        tr.append(time.perf_counter() - t)
        tt.append(tr[-1] - remote.last_run_us * 1e-6)  # round trip minus the server's own Simulator.run
    return stats_ms(tl), stats_ms(tr), stats_ms(tt)


def concurrent(rknn_path: Path, port: int, token: str, clients: int, per_client: int, inputs, expected) -> dict:
    from openrknn.package import read_package
    from openrknn.runtime.connect import connect_board

    pkg = read_package(str(rknn_path))
    os.environ["OPENRKNN_TOKEN"] = token
    errors, wrong, done = [], [0], [0]
    lock = threading.Lock()
    bar = tqdm(total=clients * per_client, desc="concurrent", leave=False)

    def worker(k: int):
        try:
            rt = connect_board("rk1808", f"127.0.0.1:{port}", pkg)
        except Exception as e:  # counted, reported
            with lock:
                errors.append(repr(e))
            return
        try:
            for i in range(per_client):
                j = (k + i) % len(inputs)
                try:
                    out = rt.run([inputs[j]])
                    ok = all(np.array_equal(a, b) for a, b in zip(out, expected[j]))
                except Exception as e:
                    with lock:
                        errors.append(repr(e))
                    continue
                with lock:
                    wrong[0] += not ok
                    done[0] += 1
                    bar.update(1)
        finally:
            rt.release()

    t = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    bar.close()
    wall = time.perf_counter() - t
    return {"clients": clients, "per_client": per_client, "done": done[0], "errors": len(errors),
            "wrong": wrong[0], "wall_s": wall, "per_s": done[0] / wall, "first_errors": errors[:3]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=200, help="interleaved inferences per model")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--per-client", type=int, default=200)
    # 1 by default: on a shared 2-core machine, onnxruntime's spinning thread pools in the bench process and in the
    # server steal each other's cores and the numbers measure the scheduler, not the protocol (0 = all cores)
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime threads, both sides (default 1; 0 = all)")
    args = ap.parse_args()
    if not YOLOX.exists():
        print(f"skipped: {YOLOX} not found (the shared data folder is absent)")
        return 0
    os.environ["OPENRKNN_THREADS"] = str(args.threads)
    args.threads = args.threads or None

    from openrknn.package import read_package
    from openrknn.runtime.connect import connect_board
    from openrknn.testing import spawn_server
    from openrknn.runtime.simulator import Simulator

    tmp = Path(tempfile.mkdtemp(prefix="openrknn-bench-"))
    transport_onnx(tmp / "transport.onnx")
    models = {"yolox_nano 416 (float)": build_float(YOLOX, tmp / "yolox.rknn"),
              "transport only (same I/O)": build_float(tmp / "transport.onnx", tmp / "transport.rknn")}
    token_file = tmp / "token"
    server_args = ["--token-file", str(token_file)] + (["--threads", str(args.threads)] if args.threads else [])
    proc, port = spawn_server(server_args, stderr=open(tmp / "server.log", "w"))
    token = token_file.read_text().strip()
    os.environ["OPENRKNN_TOKEN"] = token
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (416, 416, 3), dtype=np.uint8)
    try:
        rows = []
        for name, path in models.items():
            pkg = read_package(str(path))
            local = Simulator(pkg.model_bytes, pkg.metadata, threads=args.threads)
            remote = connect_board("rk1808", f"127.0.0.1:{port}", pkg)
            same = all(np.array_equal(a, b) for a, b in zip(local.run([x]), remote.run([x])))
            sl, sr, st = interleaved(local, remote, x, args.iters, name)
            rows.append((name, sl, sr, st, same))
            remote.release()
            local.release()
        print(f"\nRemote (loopback, 127.0.0.1:{port}) vs local simulator, input 416x416x3 uint8, batch 1, "
              f"{args.iters} interleaved runs each, {os.cpu_count()} CPU cores, onnxruntime threads "
              f"{args.threads or 'all'} on each side\n")
        print("| model | local median ms | remote median ms | overhead ms (median) | ratio | local mean | "
              "remote mean | overhead ms (mean) | transfer ms (median) | bit-exact |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for name, sl, sr, st, same in rows:
            print(f"| {name} | {sl['median']:.2f} | {sr['median']:.2f} | {sr['median'] - sl['median']:.2f} | "
                  f"{sr['median'] / sl['median']:.3f} | {sl['mean']:.2f} | {sr['mean']:.2f} | "
                  f"{sr['mean'] - sl['mean']:.2f} | {st['median']:.2f} | {same} |")
        print("\noverhead = remote - local; transfer = remote round trip minus the server's own run time (framing, "
              "copies, loopback, wake-ups)")

        if args.clients and args.per_client:
            pkg = read_package(str(models["yolox_nano 416 (float)"]))
            sim = Simulator(pkg.model_bytes, pkg.metadata, threads=args.threads)
            inputs = [rng.integers(0, 256, (416, 416, 3), dtype=np.uint8) for _ in range(4)]
            expected = [sim.run([i]) for i in inputs]
            c = concurrent(models["yolox_nano 416 (float)"], port, token, args.clients, args.per_client, inputs,
                           expected)
            print(f"\nConcurrent clients on yolox_nano 416 (float): {c['clients']} clients x {c['per_client']} "
                  f"inferences\n")
            print("| inferences done | errors | wrong outputs | wall s | inferences/s |")
            print("|---|---|---|---|---|")
            print(f"| {c['done']} | {c['errors']} | {c['wrong']} | {c['wall_s']:.1f} | {c['per_s']:.1f} |")
            if c["first_errors"]:
                print("first errors:", *c["first_errors"], sep="\n  ")
    finally:
        proc.terminate()
        proc.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
