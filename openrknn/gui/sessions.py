"""Per-browser sessions: a random cookie token names a private folder. Uploads land there under sanitized names,
written atomically and size-limited while they stream; downloads resolve inside it or are refused."""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import tempfile
import threading
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator, Dict, Iterable, Optional, Tuple

from ..errors import OpenRKNNError

SESSION_COOKIE = "openrknn_session"
# model files (the conversion core's loaders) and the weights files of two-file formats (uploaded beside them)
MODEL_SUFFIXES = (".onnx", ".pt", ".pth", ".torchscript", ".jit", ".pt2", ".tflite", ".cfg", ".prototxt", ".pb",
                  ".json", ".h5", ".hdf5", ".keras", ".rknn", ".weights", ".caffemodel", ".bin")
WEIGHT_SUFFIXES = (".weights", ".caffemodel", ".bin")  # .bin: a TensorFlow.js model's weight shards
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
CALIB_SUFFIXES = IMAGE_SUFFIXES + (".npy",)
_TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{32,64}$")
_MAX_NAME = 100


class RequestRefused(OpenRKNNError):
    """A request the GUI will not serve; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def framework_of(name: str) -> str:
    """'onnx', 'pytorch', 'tflite', 'darknet', 'caffe', 'tensorflow', 'tfjs', 'keras' or 'rknn' from the file name,
    as the conversion core's loaders dispatch."""
    from ..convert.loaders import model_kind
    from ..errors import ModelLoadError

    try:
        return model_kind(name)
    except ModelLoadError:
        raise RequestRefused(400, f"'{Path(name).name}': unknown model type '{Path(name).suffix.lower()}'; pick a "
                             "TorchScript .pt, a torch.export .pt2, an .onnx, a .tflite, a Darknet .cfg, a Caffe "
                             ".prototxt, a TensorFlow .pb, a TensorFlow.js model.json, a Keras .h5 / .keras or an "
                             ".rknn file") from None


def sanitize_filename(name: str, allowed_suffixes: Iterable[str] = ()) -> str:
    """The base name only, reduced to [A-Za-z0-9._-], no leading or repeated dots, at most 100 characters, suffix
    kept."""
    base = str(name).replace("\\", "/").rsplit("/", 1)[-1]
    stem, suffix = os.path.splitext(base.strip())
    suffix = suffix.lower()
    allowed = tuple(allowed_suffixes)
    bad_type = (allowed and suffix not in allowed) or not re.fullmatch(r"\.[a-z0-9]{1,12}", suffix or ".")
    if bad_type or not stem.strip("."):
        raise RequestRefused(400, f"file name {name!r}: type '{suffix or '(none)'}' is not accepted here; allowed: "
                             f"{', '.join(allowed) or 'a name with a file type'}")
    # accents fold to ASCII (e.g. 'codé' -> 'code'); other characters become '_'
    ascii_stem = unicodedata.normalize("NFKD", stem).encode("ascii", "ignore").decode("ascii")
    cleaned = re.sub(r"\.{2,}", ".", re.sub(r"[^A-Za-z0-9._-]+", "_", ascii_stem)).strip("._")  # no '..' at all
    if not cleaned.strip("_"):  # e.g. a name written in Chinese: keep it distinct, not empty
        cleaned = "upload-" + hashlib.sha256(stem.encode("utf-8")).hexdigest()[:10]
    return cleaned[: _MAX_NAME - len(suffix)] + suffix


def contained_path(root: Path, name: str) -> Path:
    """root/name, resolved (symlinks too), refused unless it stays strictly inside root."""
    if "\x00" in name:
        raise RequestRefused(400, "file name contains a NUL byte")
    root_r = root.resolve()
    candidate = (root_r / name).resolve()
    if candidate == root_r or root_r not in candidate.parents:
        raise RequestRefused(403, f"'{name}' is outside this session's folder; only files this session produced can "
                             "be downloaded")
    return candidate


async def save_stream(chunks: AsyncIterator[bytes], dest: Path, limit: int, name: Optional[str] = None) -> int:
    """Stream request body chunks to dest atomically; stop and delete at `limit` bytes (HTTP 413). Messages name
    the file as `name` (default: dest's name)."""
    name = name or dest.name
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".upload-", dir=str(dest.parent))
    size = 0
    try:
        with os.fdopen(fd, "wb") as f:
            async for chunk in chunks:
                size += len(chunk)
                if size > limit:
                    raise RequestRefused(413, f"upload of '{name}' is over the {limit / 1e6:.0f} MB limit; give "
                                         "a path on this machine instead, or restart the GUI with a larger "
                                         "--max-upload-mb")
                f.write(chunk)
        if size == 0:
            raise RequestRefused(400, f"upload of '{name}' is empty")
        os.replace(tmp, dest)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return size



@dataclass
class Session:
    """What one browser has picked and built. Mutated under `lock` (requests and the build worker share it)."""

    key: str
    root: Path
    model: Optional[dict] = None  # {"name", "path", "framework", "source", "inputs", "needs_input_size"}
    dataset: Optional[dict] = None  # {"kind", "path", "count", "source"}
    rknn: Optional[str] = None  # file name under outputs/ of the current .rknn (built or picked)
    result: Optional[dict] = None  # the last build's result
    last_feeds: Optional[dict] = None  # {"inputs": arrays fed, "image": name} of the last inference
    accuracy: Optional[tuple] = None  # ((rknn name, mtime), per-layer rows) of the last accuracy analysis
    form: Optional[dict] = None  # the page's form as last saved (config, toggles, names): restored on reload
    built_with: Optional[dict] = None  # the settings the current .rknn was built with: what a rebuild reuses
    inference: Optional[dict] = None  # the last inference report, shown again after a reload
    uploading: int = 0  # calibration uploads still streaming: a build now would miss them
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    def _folder(self, name: str) -> Path:
        # created on first use, so a page view alone (or a stray cross-site GET) leaves nothing on disk
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def uploads(self) -> Path:
        return self._folder("uploads")

    @property
    def outputs(self) -> Path:
        return self._folder("outputs")

    @property
    def calib(self) -> Path:
        return self._folder("calibration")

    def rknn_path(self) -> Optional[Path]:
        return self.outputs / self.rknn if self.rknn else None

    def redact(self, text: str) -> str:
        """text with this session's folders replaced by what the user knows them as: an uploaded or built file by
        its name, the folder itself by a description. The page never learns where the session lives."""
        return redact_folder(text, self.root, {"uploads": "", "outputs": "", "calibration": "uploaded images"})


def redact_folder(text: str, root: Path, subfolders: Dict[str, str]) -> str:
    """Replace root/<sub>/ by subfolders[sub] (a file inside reads as its name), root/<sub> by '(<label>)' and any
    other mention of root by '(session folder)'; both the given and the resolved spelling of root."""
    if not isinstance(text, str):
        return text
    for base in dict.fromkeys((str(root), str(Path(root).resolve()))):
        if base not in text:
            continue
        for sub, label in subfolders.items():
            text = text.replace(f"{base}{os.sep}{sub}{os.sep}", "")
            text = text.replace(f"{base}{os.sep}{sub}", f"({label or sub})")
        text = text.replace(base, "(session folder)")
    return text


def redact_json(value, redact):
    """Apply redact to every string in a JSON-like value."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_json(v, redact) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_json(v, redact) for v in value]
    return value


class SessionStore:
    """token -> Session. The folder is named by a hash of the token, so the secret never appears on disk."""

    def __init__(self, workdir: Path):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._sessions: Dict[str, Session] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _key(token: str) -> str:
        return hashlib.sha256(token.encode("ascii")).hexdigest()[:32]

    def get(self, token: Optional[str]) -> Optional[Session]:
        if not token or not _TOKEN_RE.match(token):
            return None
        with self._lock:
            return self._sessions.get(self._key(token))

    def create(self) -> Tuple[str, Session]:
        token = secrets.token_urlsafe(32)
        key = self._key(token)
        session = Session(key=key, root=self.workdir / key)
        with self._lock:
            self._sessions[key] = session
        return token, session

    def by_key(self, key: str) -> Optional[Session]:
        with self._lock:
            return self._sessions.get(key)
