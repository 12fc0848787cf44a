"""Progress bars are drawn on a terminal only (issue 20, item 8): piped output and logs stay clean lines, and the GUI
still reads the bars' counts for its own progress bar."""

from __future__ import annotations

import io

import yaml

from test_user_layers import calibration
from gui_models import split_model
from openrknn.progress import progress_bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_bar_is_drawn_on_a_terminal_and_counts_everywhere():
    for stream, drawn in ((Terminal(), True), (io.StringIO(), False)):
        with progress_bar(total=5, desc="calibrate", file=stream, mininterval=0) as bar:
            for _ in range(5):
                bar.update(1)
            assert bar.n == 5 and not bar.disable  # the GUI's watcher reads n / total of open, enabled bars
        assert ("calibrate" in stream.getvalue()) == drawn and ("\r" in stream.getvalue()) == drawn
    with progress_bar(range(3), enabled=False, file=Terminal()) as bar:
        assert bar.disable and list(bar) == [0, 1, 2]


def test_the_gui_still_sees_an_undrawn_bar():
    from openrknn.gui.jobs import _active_bars

    with progress_bar(total=4, desc="calibrate min/max", file=io.StringIO()) as bar:
        bar.update(3)
        assert {"desc": "calibrate min/max", "n": 3, "total": 4} in _active_bars()


def test_a_piped_build_logs_clean_lines(tmp_path, python_subprocess):
    """`openrknn convert` with its output piped (a CI log, `| tee`): log lines, no bar redraws mixed into them."""
    model = split_model(tmp_path / "split.onnx")
    cfg = tmp_path / "convert.yml"
    cfg.write_text(yaml.safe_dump({"model": model.name, "output": "split.rknn",
                                   "config": {"std_values": [[255, 255, 255]], "target_platform": "rk1808"},
                                   "build": {"do_quantization": True, "dataset": calibration(tmp_path).name}}))
    done = python_subprocess(["-m", "openrknn", "convert", cfg], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "quantized to asymmetric_quantized-u8" in done.stderr  # the log is there
    assert "\r" not in done.stderr + done.stdout and "it/s" not in done.stderr and "%|" not in done.stderr
    assert all(line.startswith(("I ", "W ", "E ", "D ")) for line in done.stderr.splitlines() if line), done.stderr
