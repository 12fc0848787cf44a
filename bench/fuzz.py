"""Hostile inputs, the full run: the container fuzz, the protocol fuzz, slow and idle unauthenticated peers beside a
real client, and concurrent clients beside them (issue 17's targets).

    python bench/fuzz.py [--container-cases 10000] [--frames 3000] [--peers 50] [--clients 8] [--per-client 200]
                         [--workers 2] [--seed 0] [--baseline PATH]

--baseline PATH runs the same cases against another openrknn checkout (e.g. a clone of an older commit) in the same
run, as the "before" column. The mutators and harness live in tests/fuzz/ (the test suite runs a bounded part of them
on every run). Prints one markdown table; exits 0 (counts are reported, the tests assert them).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, Optional

import numpy as np
from openrknn.progress import progress_bar as tqdm  # drawn on a terminal only

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "fuzz"))

from container_cases import ContainerFuzzer, build_seeds  # noqa: E402
from container_fuzz import run_container_fuzz  # noqa: E402
from protocol_fuzz import (FuzzServer, PeerSwarm, ProtocolFuzzer, concurrent_clients, local_outputs,  # noqa: E402
                           real_client, run_case, run_protocol_fuzz)

AUTH_DEADLINE = 3.0  # --auth-timeout of the servers here: the peers' deadline


def container_part(folder: Path, args, seeds, root: Path) -> Dict[str, object]:
    bar = tqdm(total=args.container_cases, desc=f"container fuzz ({root.name})", leave=False)
    report = run_container_fuzz(folder, args.container_cases, seed=args.seed, workers=args.workers, seeds=seeds,
                                case_timeout=30.0 if root == ROOT else 5.0, progress=lambda r: bar.update(1),
                                root=root)
    bar.close()
    rows = report.rows()
    rows["seconds"] = round(report.seconds, 1)
    failures = report.failures()
    rows["first failures"] = [f"{r['kind']}/{r.get('detail', '')}: {r['outcome']} {str(r.get('error', ''))[:90]}"
                              for r in failures[:3]]
    return rows


def server_flags(root: Path, max_clients: int) -> list:
    flags = ["--io-timeout", "1", "--max-clients", str(max_clients), "--max-models", "4", "--max-message-mb", "8"]
    if root == ROOT:  # options the hardened server added
        flags += ["--auth-timeout", str(AUTH_DEADLINE), "--min-rate-kib", "64", "--max-pending", "64"]
    return flags


def protocol_part(folder: Path, args, seeds, root: Path) -> Dict[str, object]:
    files = ContainerFuzzer(seeds, args.seed)

    def damaged(k: int) -> bytes:
        case = files.case(k)
        return case.data if case.data else b"x"

    srv = FuzzServer(folder, seeds[0].path, server_flags(root, 64), root=root)
    try:
        report = run_protocol_fuzz(srv, ProtocolFuzzer(args.seed, seeds[0].data, srv.models, damaged), args.frames)
    finally:
        srv.stop()
    rows = report.rows()
    rows["tracebacks in the server log"] = report.tracebacks_in_log
    rows["seconds"] = round(report.seconds, 1)
    return rows


def garbage_client(srv: FuzzServer, fuzzer: ProtocolFuzzer, stop: threading.Event, counts: Dict[str, int]) -> None:
    rng = random.Random(5)
    while not stop.is_set():
        r = run_case(srv, fuzzer.case(rng.randrange(10 ** 6)), reply_timeout=10.0)
        counts[r["outcome"]] = counts.get(r["outcome"], 0) + 1


def peers_part(folder: Path, args, seeds, root: Path) -> Dict[str, object]:
    """Slow/idle unauthenticated peers (more than --max-clients) beside one real client, then 8 concurrent clients
    with the peers and a garbage client beside them."""
    model = seeds[0].path
    srv = FuzzServer(folder, model, server_flags(root, 16), root=root)
    os.environ.update(OPENRKNN_TOKEN=srv.token, OPENRKNN_DEVICES=str(folder / "no-devices.json"),
                      OPENRKNN_ADB=str(folder / "no-adb"))
    rng = np.random.default_rng(args.seed)
    xs = [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(args.per_client)]
    want = local_outputs(model, xs)
    out: Dict[str, object] = {}
    files = ContainerFuzzer(seeds, args.seed)
    fuzzer = ProtocolFuzzer(args.seed, seeds[0].data, srv.models,
                            lambda k: files.case(k).data or b"x")
    try:
        with PeerSwarm(srv, args.peers) as swarm:
            time.sleep(1.0)  # every peer holds a connection
            out["real client"] = real_client(srv, model, xs, want)
            stop, garbage = threading.Event(), {}
            thread = threading.Thread(target=garbage_client, args=(srv, fuzzer, stop, garbage), daemon=True)
            thread.start()
            out["concurrent"] = concurrent_clients(srv, model, args.clients, args.per_client, seed=args.seed)
            stop.set()
            thread.join(30)
            time.sleep(2 * AUTH_DEADLINE + 1)  # give every peer connection the time to be cut
        out["peers"] = swarm.summary(AUTH_DEADLINE)
        out["garbage client frames"] = garbage
        out["server alive"] = srv.alive()
        out["tracebacks in the server log"] = srv.log_text().count("Traceback")
    finally:
        srv.stop()
    return out


def run_all(args, root: Path, folder: Path, seeds) -> Dict[str, Dict[str, object]]:
    return {"container": container_part(folder / "container", args, seeds, root),
            "protocol": protocol_part(folder / "protocol", args, seeds, root),
            "peers": peers_part(folder / "peers", args, seeds, root)}


def table(results: Dict[str, Dict[str, Dict[str, object]]], args) -> str:
    cols = list(results)

    def cell(col: str, part: str, *keys: str) -> str:
        value: object = results[col][part]
        for k in keys:
            value = value.get(k) if isinstance(value, dict) else None
        return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)

    rows = [
        ("container: fuzzed inputs", str(args.container_cases), ("container", "cases")),
        ("container: internal errors", "0", ("container", "internal errors")),
        ("container: tracebacks (`openrknn info`)", "0", ("container", "tracebacks")),
        ("container: hangs (case killed at its time limit)", "0", ("container", "hangs")),
        ("container: reads beyond the declared size", "0", ("container", "reads beyond the declared size")),
        ("container: silent corruptions (damaged, ran, outputs changed)", "0",
         ("container", "silent corruptions")),
        ("container: refused with an openrknn error", "", ("container", "refused with an openrknn error")),
        ("container: accepted, outputs identical", "", ("container", "accepted, outputs identical")),
        ("container: crafted under a valid checksum, ran, outputs changed", "",
         ("container", "accepted with a valid checksum, outputs changed (crafted)")),
        ("protocol: fuzzed frames", str(args.frames), ("protocol", "frames")),
        ("protocol: frames dropped without a reply", "0", ("protocol", "dropped without a reply")),
        ("protocol: InternalError replies", "0", ("protocol", "InternalError replies")),
        ("protocol: tracebacks in the server log", "0", ("protocol", "tracebacks in the server log")),
        (f"peers: {args.peers} slow/idle unauthenticated peers, real client errors (init_runtime + "
         f"{args.per_client} inferences)", "0", ("peers", "real client", "errors")),
        ("peers: real client outputs different from local", "0", ("peers", "real client", "mismatches")),
        ("peers: real client inferences done", str(args.per_client), ("peers", "real client", "inferences")),
        ("peers: peer connections cut / made", "", ("peers", "peers", "cut")),
        ("peers: not cut within 2x the deadline", "0", ("peers", "peers", "not cut within 2x the deadline")),
        ("peers: slowest cut / deadline", "<= 2", ("peers", "peers", "slowest cut / deadline")),
        (f"concurrent: {args.clients} x {args.per_client} inferences, errors", "0", ("peers", "concurrent", "errors")),
        ("concurrent: outputs different from local", "0", ("peers", "concurrent", "mismatches")),
        ("concurrent: inferences done", str(args.clients * args.per_client), ("peers", "concurrent", "inferences")),
    ]
    lines = ["| check | target | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for label, target, keys in rows:
        values = []
        for c in cols:
            v = cell(c, *keys)
            if keys[-1] == "cut":
                v = f"{v} / {cell(c, 'peers', 'peers', 'peer connections')}"
            values.append(v)
        lines.append(f"| {label} | {target} | " + " | ".join(values) + " |")
    return "\n".join(lines)


def main(argv: Optional[list] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--container-cases", type=int, default=10_000)
    ap.add_argument("--frames", type=int, default=3000, help="protocol fuzz frames")
    ap.add_argument("--peers", type=int, default=50, help="slow/idle unauthenticated peers")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--per-client", type=int, default=200)
    ap.add_argument("--workers", type=int, default=2, help="container fuzz worker processes")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--baseline", type=Path, help="another openrknn checkout to run the same cases against")
    args = ap.parse_args(argv)
    os.environ.setdefault("OPENRKNN_THREADS", "1")
    with tempfile.TemporaryDirectory(prefix="openrknn-fuzz-") as tmp:
        folder = Path(tmp)
        seeds = build_seeds(folder / "seeds")
        results = {}
        if args.baseline:
            results[f"baseline ({args.baseline.name})"] = run_all(args, args.baseline.resolve(), folder / "base",
                                                                  seeds)
        results["this checkout"] = run_all(args, ROOT, folder / "this", seeds)
    print(table(results, args))
    for name, res in results.items():
        print(f"\n{name}: container {res['container']['seconds']} s, protocol {res['protocol']['seconds']} s; "
              f"replies by kind {res['protocol']['replies by kind']}; garbage client "
              f"{res['peers']['garbage client frames']}; server alive {res['peers']['server alive']}")
        if res["container"]["first failures"]:
            print("  first container failures:", *res["container"]["first failures"], sep="\n    ")
    return 0


if __name__ == "__main__":
    sys.exit(main())
