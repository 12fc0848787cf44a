"""A container fuzz run: seeds -> mutated cases -> worker subprocesses -> the counts the issue asks for."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

from container_cases import ContainerFuzzer, Seed, build_seeds, cleanup, materialize
from workers import ROOT, run_jobs, tally

WORKER = Path(__file__).resolve().parent / "container_worker.py"
READ_SLACK = 512  # bytes: reading /proc/self/io to count the reads is itself a read


@dataclass
class ContainerReport:
    cases: int
    seconds: float
    results: List[dict] = field(repr=False, default_factory=list)

    def count(self, test: Callable[[dict], bool]) -> int:
        return sum(1 for r in self.results if test(r))

    @property
    def internal(self) -> List[dict]:
        """Internal errors: an exception that is not an openrknn error (in the reader, `info` or the API), or a
        worker that died (a crash, or the memory limit)."""
        return [r for r in self.results if r.get("internal") or r["outcome"] == "crash"]

    @property
    def tracebacks(self) -> List[dict]:
        return [r for r in self.results if r.get("traceback")]

    @property
    def hangs(self) -> List[dict]:
        return [r for r in self.results if r["outcome"] == "hang"]

    @property
    def overreads(self) -> List[dict]:
        return [r for r in self.results if r.get("read_excess", 0) > READ_SLACK]

    @property
    def silent(self) -> List[dict]:
        """Damaged (not forged) files that ran with outputs other than the original's."""
        return [r for r in self.results if r["outcome"] == "different" and not r.get("forged")]

    def rows(self) -> Dict[str, int]:
        return {"cases": self.cases, "internal errors": len(self.internal), "tracebacks": len(self.tracebacks),
                "hangs": len(self.hangs), "reads beyond the declared size": len(self.overreads),
                "silent corruptions": len(self.silent),
                "refused with an openrknn error": self.count(lambda r: r["outcome"] == "refused"),
                "accepted, outputs identical": self.count(lambda r: r["outcome"] == "same"),
                "accepted with a valid checksum, outputs changed (crafted)": self.count(
                    lambda r: r["outcome"] == "different" and r.get("forged"))}

    def by_kind(self) -> Dict[str, Dict[str, int]]:
        kinds: Dict[str, List[dict]] = {}
        for r in self.results:
            kinds.setdefault(r["kind"], []).append(r)
        return {k: tally(v) for k, v in sorted(kinds.items())}

    def failures(self) -> List[dict]:
        bad = {id(r): r for r in self.internal + self.tracebacks + self.hangs + self.overreads + self.silent}
        return sorted(bad.values(), key=lambda r: r["n"])


def run_container_fuzz(folder: Path, cases: int, seed: int = 0, workers: int = 1, case_timeout: float = 30.0,
                       memory_bytes: int = 3 << 30, seeds: Optional[List[Seed]] = None,
                       progress: Optional[Callable[[dict], None]] = None, root: Path = ROOT) -> ContainerReport:
    """root: the openrknn checkout whose reader the workers import (another checkout gives a baseline)."""
    folder.mkdir(parents=True, exist_ok=True)
    seeds = seeds or build_seeds(folder / "seeds")
    by_name = {s.name: s for s in seeds}
    fuzzer = ContainerFuzzer(seeds, seed)
    work = folder / "cases"
    work.mkdir(exist_ok=True)
    paths: Dict[int, str] = {}

    def prepare(job: dict) -> dict:  # cases are made one at a time, as workers take them
        case = fuzzer.case(job["n"])
        job.update(kind=case.kind, seed=case.seed, detail=case.detail, forged=case.forged)
        seed_file = by_name[case.seed]
        paths[job["n"]] = path = materialize(case, work)
        return {"n": job["n"], "path": path, "seed_path": str(seed_file.path),
                "inputs_path": str(seed_file.inputs_path)}

    def finish(job: dict) -> None:
        cleanup(paths.pop(job["n"]))

    t = time.monotonic()
    jobs = ({"n": n} for n in range(cases))
    results = run_jobs(WORKER, jobs, workers, case_timeout, memory_bytes, folder, prepare, finish, progress, root)
    shutil.rmtree(work, ignore_errors=True)
    return ContainerReport(cases, time.monotonic() - t, results)
