"""The container fuzz suite (issue 17): mutated `.rknn` files, each in a worker subprocess with memory and time limits,
must give 0 internal errors, 0 tracebacks, 0 hangs, 0 reads beyond the file's size and 0 silent corruptions.
The CI part runs 2,000 cases; `python bench/fuzz.py` runs the full 10,000 (the slow test here does too)."""

from __future__ import annotations

import pytest
from container_cases import KINDS, ContainerFuzzer, build_seeds
from container_fuzz import run_container_fuzz


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    return build_seeds(tmp_path_factory.mktemp("fuzz_seeds"))


def _explain(report) -> str:
    return "\n".join(str(r) for r in report.failures()[:20])


def test_cases_are_reproducible_and_cover_every_kind(seeds):
    a, b = ContainerFuzzer(seeds, 7), ContainerFuzzer(seeds, 7)
    cases = [a.case(n) for n in range(400)]
    assert [(c.kind, c.data, c.special) for c in cases] == [(c.kind, c.data, c.special)
                                                           for c in (b.case(n) for n in range(400))]
    assert {c.kind for c in cases} == {k for k, _, _ in KINDS}
    assert all(c.data != seeds_by_name(seeds)[c.seed] for c in cases if not c.forged and c.data is not None
               and c.kind not in ("vendor", "foreign"))


def seeds_by_name(seeds):
    return {s.name: s.data for s in seeds}


def test_2000_fuzzed_files_no_internal_error_traceback_hang_overread_or_silent_corruption(seeds, tmp_path):
    report = run_container_fuzz(tmp_path, 2000, seed=17, workers=2, seeds=seeds)
    rows = report.rows()
    print(rows)
    assert rows["cases"] == 2000 and len(report.results) == 2000
    for row in ("internal errors", "tracebacks", "hangs", "reads beyond the declared size", "silent corruptions"):
        assert rows[row] == 0, f"{row}: {rows[row]}\n{_explain(report)}"
    # the run is not vacuous: most files are refused, crafted ones get through the checksum and some run
    assert rows["refused with an openrknn error"] > 1500
    assert rows["accepted, outputs identical"] > 20


@pytest.mark.slow
def test_10000_fuzzed_files(seeds, tmp_path):
    report = run_container_fuzz(tmp_path, 10_000, seed=1, workers=2, seeds=seeds)
    rows = report.rows()
    for row in ("internal errors", "tracebacks", "hangs", "reads beyond the declared size", "silent corruptions"):
        assert rows[row] == 0, f"{row}: {rows[row]}\n{_explain(report)}"
