"""Where the vendor toolkit's Python is, whether it works, and how `openrknn vendor-setup` makes one.

The vendor toolkit pins torch <= 2.4, numpy <= 1.26 and onnx <= 1.18, so it never enters openrknn's environment: it
lives in its own virtualenv and openrknn only starts its interpreter. Lookup order: OPENRKNN_VENDOR_PYTHON (any
interpreter with the toolkit, e.g. a Python 3.8 with rknn-toolkit 1.7.x), then the venv vendor-setup makes under
OPENRKNN_CACHE (default ~/.cache/openrknn)/vendor-venv.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional

from ..errors import OpenRKNNError

log = logging.getLogger("openrknn.vendor")

ENV_PYTHON = "OPENRKNN_VENDOR_PYTHON"
ENV_CACHE = "OPENRKNN_CACHE"
TOOLKIT2_VERSION = "2.5.0"
# CPU builds of the torch the vendor pins: PyPI's Linux x86_64 torch wheels pull several GB of CUDA libraries
CPU_TORCH = ("torch==2.4.0", "https://download.pytorch.org/whl/cpu")

_PROBE = """
import json, sys
from rknn.api import RKNN  # noqa: F401  (the import is the check)
def version():
    for name in ("rknn-toolkit2", "rknn-toolkit"):
        try:
            try:
                from importlib import metadata
                return name, metadata.version(name)
            except ImportError:  # Python < 3.8 (rknn-toolkit 1.x)
                import pkg_resources
                return name, pkg_resources.get_distribution(name).version
        except Exception:
            pass
    return "unknown", "unknown"
name, ver = version()
print(json.dumps({"toolkit": name, "version": ver, "python": sys.version.split()[0]}))
"""


class VendorToolkitError(OpenRKNNError):
    """The vendor toolkit is missing or broken, or it failed on a job."""


@dataclass
class VendorPython:
    python: str  # interpreter path
    toolkit: str  # 'rknn-toolkit2' or 'rknn-toolkit'
    version: str
    python_version: str
    source: str  # where it was found (env var or cache)


def cache_dir() -> Path:
    return Path(os.environ.get(ENV_CACHE) or Path.home() / ".cache" / "openrknn")


def default_venv() -> Path:
    return cache_dir() / "vendor-venv"


def _venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _fix_hint() -> str:
    return (f"run `openrknn vendor-setup` (creates {default_venv()} with rknn-toolkit2=={TOOLKIT2_VERSION}), or set "
            f"{ENV_PYTHON} to a Python that has the vendor toolkit installed")


def probe(python: str, source: str, timeout: float = 180.0) -> VendorPython:
    """Start `python`, import rknn.api, read the toolkit version. Raises VendorToolkitError saying what to do."""
    if not Path(python).exists():
        raise VendorToolkitError(f"vendor Python {python} ({source}) does not exist; {_fix_hint()}")
    try:
        proc = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True, timeout=timeout)
    except OSError as e:
        raise VendorToolkitError(f"vendor Python {python} ({source}) cannot be started ({e}); {_fix_hint()}") from e
    except subprocess.TimeoutExpired as e:
        raise VendorToolkitError(f"vendor Python {python} ({source}) took over {timeout:.0f} s to import rknn.api; "
                                 f"check the machine's load, or {_fix_hint()}") from e
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise VendorToolkitError(f"vendor Python {python} ({source}) cannot import the vendor toolkit: {last}. "
                                 f"The venv is missing rknn-toolkit2 or is broken; {_fix_hint()}")
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    return VendorPython(python, info["toolkit"], info["version"], info["python"], source)


def find_vendor_python() -> VendorPython:
    """The vendor interpreter to use, checked by starting it. Raises VendorToolkitError with the fix."""
    env = os.environ.get(ENV_PYTHON)
    if env:
        return probe(env, f"from {ENV_PYTHON}")
    venv_py = _venv_python(default_venv())
    if not venv_py.exists():
        raise VendorToolkitError(f"no vendor toolkit found: {ENV_PYTHON} is not set and {default_venv()} does not "
                                 f"exist; {_fix_hint()}")
    return probe(str(venv_py), f"the vendor-setup venv {default_venv()}")


def _run(cmd: List[str], what: str, echo: Callable[[str], None]) -> subprocess.CompletedProcess:
    echo(f"$ {' '.join(cmd)}")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-8:])
        raise VendorToolkitError(f"{what} failed (exit {proc.returncode}):\n{tail}")
    return proc


# What `rknn.api` imports, and what its ONNX load / build / hybrid quantization / simulator need, when rknn-toolkit2
# is installed without its own requirements (whose torch pin pulls several GB of CUDA libraries). torch is imported
# at `import rknn.api` time, so a CPU build of it is needed; the vendor's load_pytorch (which openrknn never calls:
# the bridge hands it ONNX) is what ties it to torch <= 2.4. setuptools < 81 still ships pkg_resources, which
# RKNN() uses. opencv-python-headless provides the same cv2 module as the opencv-python it names.
LITE_REQUIREMENTS = ("numpy<=1.26.4", "onnx>=1.16.1,<=1.18.0", "onnxruntime>=1.17.0", "protobuf>=4.21.6,<=4.25.4",
                     "opencv-python-headless>=4.5.5.64", "scipy>=1.9.3", "tqdm>=4.64.1", "ruamel.yaml>=0.17.21",
                     "psutil>=5.9.0", "fast-histogram>=0.11", "setuptools<81")


def _torch_spec() -> str:
    """The torch to put in a lite vendor venv: the version openrknn's own environment runs (so pip finds the same
    wheel it installed here, e.g. a local CPU build), else the vendor's pin."""
    try:
        from importlib.metadata import version

        return "torch==" + version("torch").split("+")[0]
    except Exception:
        return CPU_TORCH[0]


def setup_venv(venv: Optional[Path] = None, python: Optional[str] = None, cpu_torch: bool = True,
               force: bool = False, full: bool = False, echo: Callable[[str], None] = print) -> VendorPython:
    """Create `venv` (default: the cache folder) with rknn-toolkit2 and check that it imports.

    Lite (default): rknn-toolkit2 without its requirements, plus the CPU torch it imports and what its ONNX path
    needs (LITE_REQUIREMENTS): enough to compile and simulate ONNX models, the only way openrknn drives it.
    full: `pip install rknn-toolkit2` with every requirement it declares (torch 2.4; what its load_pytorch needs).
    cpu_torch: first try torch from PyTorch's own CPU index (full: the pinned 2.4.0) so pip does not take PyPI's
    CUDA build; when that index cannot be reached, pip's normal resolution is used. A failed setup removes what it
    made, so no half-made venv is ever found later."""
    venv = Path(venv or default_venv()).absolute()
    python = python or sys.executable
    if venv.exists():
        if not force:
            try:
                found = probe(str(_venv_python(venv)), f"the existing venv {venv}")
            except VendorToolkitError as e:
                raise VendorToolkitError(f"{venv} exists but is broken ({e}); rerun with --force to rebuild it") \
                    from None
            echo(f"vendor toolkit already set up: {found.toolkit} {found.version} in {venv} (--force rebuilds it)")
            return found
        shutil.rmtree(venv)
    venv.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    try:
        _run([python, "-m", "venv", str(venv)], "creating the venv", echo)
        pip = [str(_venv_python(venv)), "-m", "pip", "install", "--disable-pip-version-check"]
        torch = CPU_TORCH[0] if full else _torch_spec()
        got_torch = False
        if cpu_torch:
            try:
                _run(pip + [torch, "--index-url", CPU_TORCH[1]], "installing the CPU build of torch", echo)
                got_torch = True
            except VendorToolkitError as e:
                echo(f"CPU torch index not reachable ({str(e).splitlines()[0]}); pip resolves {torch} itself")
        if full:
            _run(pip + [f"rknn-toolkit2=={TOOLKIT2_VERSION}"], f"pip install rknn-toolkit2=={TOOLKIT2_VERSION}", echo)
        else:
            if not got_torch:
                _run(pip + [torch], f"pip install {torch}", echo)
            _run(pip + ["--no-deps", f"rknn-toolkit2=={TOOLKIT2_VERSION}"],
                 f"pip install --no-deps rknn-toolkit2=={TOOLKIT2_VERSION}", echo)
            _run(pip + list(LITE_REQUIREMENTS), "installing what rknn-toolkit2 needs for ONNX models", echo)
        found = probe(str(_venv_python(venv)), f"the new venv {venv}")
    except BaseException:
        shutil.rmtree(venv, ignore_errors=True)
        raise
    size = sum(f.stat().st_size for f in venv.rglob("*") if f.is_file() and not f.is_symlink())
    echo(f"vendor toolkit ready ({'full' if full else 'lite: ONNX models only'}): {found.toolkit} {found.version} on "
         f"Python {found.python_version} in {venv} ({size / 1e9:.1f} GB, {time.time() - t0:.0f} s)")
    return found
