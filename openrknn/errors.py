"""Exception types. Every message says what was wrong, the value seen, and what to do."""

from __future__ import annotations

from typing import Any, Iterable, Optional


class OpenRKNNError(Exception):
    """Base class for every error openrknn raises on purpose."""


class ConfigError(OpenRKNNError, ValueError):
    """A config() key or value is not valid."""

    def __init__(self, key: str, value: Any, allowed: Optional[Iterable[Any] | str] = None, hint: str = ""):
        self.key, self.value = key, value
        msg = f"{key}={value!r} is not valid"
        if allowed is not None:
            allowed_s = allowed if isinstance(allowed, str) else ", ".join(repr(a) for a in allowed)
            msg += f"; allowed: {allowed_s}"
        if hint:
            msg += f". {hint}"
        super().__init__(msg)


class ModelLoadError(OpenRKNNError):
    """A model file could not be loaded (missing, wrong kind, unsupported content)."""


class BuildError(OpenRKNNError):
    """build() could not produce a model."""


class DatasetError(OpenRKNNError):
    """A calibration dataset file or one of its entries is not usable."""


class PackageError(OpenRKNNError):
    """A .rknn container could not be read or written."""


class VendorPackageError(PackageError):
    """The file is a vendor RKNN-Toolkit model, which openrknn cannot run."""


class CorruptPackageError(PackageError):
    """The file is truncated, damaged or not a .rknn container at all."""


class PackageVersionError(PackageError):
    """The file was written by a newer openrknn with a format this version cannot read."""


class RuntimeStateError(OpenRKNNError):
    """An API call came in the wrong order (e.g. inference before init_runtime)."""


class InferenceInputError(OpenRKNNError, ValueError):
    """inference() inputs do not match the model (count, shape, dtype, layout)."""


class NotSupportedError(OpenRKNNError):
    """A valid request that this version of openrknn does not implement."""
