"""Files a sweep's workers need, carried as bytes: the model, the calibration dataset and its files.

Workers may run on other machines (a Ray cluster), so they get file contents, not paths: a Bundle is put in the
executor's shared store once and written into a worker-local folder once per worker process.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Tuple

from ..errors import DatasetError


def dataset_files(listing: Path) -> List[Path]:
    """The files a dataset.txt names (relative to its folder), in order, each once; '#' starts a comment."""
    listing = Path(listing)
    try:
        text = listing.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DatasetError(f"dataset file {str(listing)!r} not found; name the calibration list under "
                           "'build: dataset:'") from None
    out: List[Path] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        for tok in line.split():
            if tok.startswith("#"):
                break
            p = Path(tok).expanduser()
            p = p if p.is_absolute() else listing.parent / p
            if not p.is_file():
                raise DatasetError(f"{listing}:{lineno}: file {tok!r} not found (looked for {str(p)!r}); paths are "
                                   "relative to the dataset file's folder")
            if p not in out:
                out.append(p)
    return out


@dataclass(frozen=True)
class Bundle:
    """The model file and the calibration dataset as bytes; ``materialize`` writes them into a folder and
    returns (model path, dataset path). Dataset entries are renamed data/d<i><suffix> and the listing rewritten, so
    absolute paths and folders of the driver's machine play no part."""

    model_name: str
    model: bytes
    dataset_name: str  # the listing's file name, kept: the package records it
    dataset_text: str
    dataset_files: Tuple[Tuple[str, bytes], ...]
    weights: Tuple[Tuple[str, bytes], ...] = ()  # a Darknet / Caffe model's weights, named to sit beside the model

    @classmethod
    def from_paths(cls, model: Path, dataset: Path, weights: "Path | None" = None) -> "Bundle":
        from ..convert.loaders import WEIGHT_SUFFIXES, model_kind, weights_beside

        kind = model_kind(model)
        extra: Tuple[Tuple[str, bytes], ...] = ()
        if kind in WEIGHT_SUFFIXES:  # written under the name the loader looks for beside the model
            src = Path(weights) if weights is not None else weights_beside(model, kind)
            extra = ((Path(model).stem + WEIGHT_SUFFIXES[kind], src.read_bytes()),)
        files = dataset_files(dataset)
        names: Dict[Path, str] = {p: f"data/d{i}{p.suffix.lower()}" for i, p in enumerate(files)}
        lines = []
        for line in Path(dataset).read_text(encoding="utf-8-sig").splitlines():
            toks = []
            for tok in line.split():
                if tok.startswith("#"):
                    break
                p = Path(tok).expanduser()
                toks.append(names[p if p.is_absolute() else Path(dataset).parent / p])
            if toks:
                lines.append(" ".join(toks))
        return cls(Path(model).name, Path(model).read_bytes(), Path(dataset).name, "\n".join(lines) + "\n",
                   tuple((names[p], p.read_bytes()) for p in files), extra)

    @property
    def digest(self) -> str:
        h = hashlib.sha256(self.model)
        h.update(self.dataset_name.encode() + b"\0" + self.dataset_text.encode())
        for name, data in self.dataset_files + self.weights:
            h.update(name.encode())
            h.update(data)
        return h.hexdigest()[:16]

    def materialize(self, root: "str | os.PathLike") -> Tuple[Path, Path]:
        folder = Path(root) / self.digest
        model, listing = folder / self.model_name, folder / self.dataset_name
        if listing.is_file():
            return model, listing
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".bundle-"))
        (tmp / self.model_name).write_bytes(self.model)
        for name, data in self.weights:
            (tmp / name).write_bytes(data)
        (tmp / "data").mkdir()
        for name, data in self.dataset_files:
            (tmp / name).write_bytes(data)
        (tmp / self.dataset_name).write_text(self.dataset_text)
        try:
            os.replace(tmp, folder)  # a whole folder appears or none (another worker may have won the race)
        except OSError:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
        return model, listing
