"""From init_runtime(target, device_id) to a model running on a board; list_devices().

A device_id is, in this order: a name from the devices file, a serial that `adb devices` lists (the client runs
`adb forward` to the server's port on the board), or an address 'host:port' / 'host' (port 8765).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Union

from ..package import RknnPackage, package_to_bytes
from . import protocol as P
from .devices import DeviceEntry, DevicesFileError, address_entry, devices_file_path, env_token, load_devices
from .remote import BoardClient, RemoteRuntime, open_model

log = logging.getLogger("openrknn.remote")

SERVE_HINT = ("start the server on the board: `openrknn serve --token-file ~/openrknn.token` (loopback only; reach it "
              "with `adb forward` or SSH) or `openrknn serve --host 0.0.0.0 --allow-remote --token-file "
              "~/openrknn.token` (network), then pass device_id='<board address>:8765' or add the board to the "
              "devices file")
DEVICES_EXAMPLE = ('{"devices": {"my-board": {"address": "192.168.1.20:8765", "token_file": "my-board.token", '
                   '"target": "rk1808"}}}')


# ---------------------------------------------------------------- adb


def adb_executable() -> Optional[str]:
    return os.environ.get("OPENRKNN_ADB") or shutil.which("adb")


def adb_devices(timeout: float = 5.0) -> List[str]:
    """Serials of devices adb sees in the 'device' state ([] when adb is missing or fails)."""
    adb = adb_executable()
    if not adb:
        return []
    try:
        out = subprocess.run([adb, "devices"], capture_output=True, text=True, timeout=timeout, check=False).stdout
    except (OSError, subprocess.TimeoutExpired) as e:
        log.warning("`adb devices` failed: %s", e)
        return []
    serials = []
    for line in out.splitlines()[1:]:  # first line: "List of devices attached"
        parts = line.split()
        if len(parts) >= 2 and parts[1] == "device":
            serials.append(parts[0])
    return serials


def adb_forward(serial: str, remote_port: int, timeout: float = 10.0) -> int:
    """Forward a free local port to remote_port on the device; returns the local port."""
    adb = adb_executable()
    if not adb:
        raise P.BoardUnreachableError(f"device {serial!r} is an adb device but adb is not installed (or set "
                                      "OPENRKNN_ADB to its path)")
    cmd = [adb, "-s", serial, "forward", "tcp:0", f"tcp:{remote_port}"]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise P.BoardUnreachableError(f"`{' '.join(cmd)}` failed: {e}") from None
    text = res.stdout.strip()
    if res.returncode != 0 or not text.isdigit():
        raise P.BoardUnreachableError(f"`{' '.join(cmd)}` failed ({(res.stderr or text).strip()[:200]}); check the "
                                      "cable and `adb devices`")
    return int(text)


# ---------------------------------------------------------------- resolving a device


def resolve_device(device_id: Optional[str], devices: Optional[Dict[str, DeviceEntry]] = None,
                   devices_path: Optional[Path] = None) -> DeviceEntry:
    """The DeviceEntry for init_runtime's device_id (None: the only configured device, or the only adb device)."""
    path = devices_path or devices_file_path()
    devices = load_devices(path) if devices is None else devices
    if device_id is None:
        if len(devices) == 1:
            return next(iter(devices.values()))
        if devices:
            raise DevicesFileError(f"init_runtime(target=...) needs device_id: the devices file {path} names several "
                                   f"boards ({', '.join(sorted(devices))}); pass one of them, or 'host:port'")
        serials = adb_devices()
        if len(serials) == 1:
            return _adb_entry(serials[0])
        found = f"adb sees {len(serials)} devices ({', '.join(serials)}); " if serials else ""
        raise DevicesFileError(f"init_runtime(target=...) needs a board: no device_id was given and the devices file "
                               f"{path} has no entries; {found}{SERVE_HINT}. Devices file example: {DEVICES_EXAMPLE}."
                               " (target=None runs the simulator on this machine)")
    if not isinstance(device_id, str) or not device_id.strip():
        raise DevicesFileError(f"device_id={device_id!r} must be a device name, an adb serial or 'host:port'")
    if device_id in devices:
        return devices[device_id]
    if ":" not in device_id and adb_executable() and device_id in adb_devices():
        return _adb_entry(device_id)
    entry = address_entry(device_id)
    if devices:
        log.info("device_id %r is not in the devices file (%s); treating it as an address", device_id,
                 ", ".join(sorted(devices)))
    return entry


def _adb_entry(serial: str) -> DeviceEntry:
    token, source = env_token()
    return DeviceEntry(name=serial, host=None, port=P.DEFAULT_PORT, token=token, adb_serial=serial,
                       token_source=source)


def open_client(entry: DeviceEntry, connect_timeout: Optional[float] = None) -> BoardClient:
    """Connect and authenticate to the device (running `adb forward` first for an adb device)."""
    host, port = entry.host, entry.port
    if entry.adb_serial and host is None:
        host, port = "127.0.0.1", adb_forward(entry.adb_serial, entry.port)
        log.info("adb forward: localhost:%d -> %s:%d", port, entry.adb_serial, entry.port)
    client = BoardClient(host, port, token=entry.token, name=entry.name,
                         connect_timeout=connect_timeout or entry.connect_timeout, timeout=entry.timeout)
    try:
        return client.connect()
    except P.BoardConnectionError as e:
        if entry.name == entry.address and ":" not in entry.name and not entry.adb_serial:
            raise type(e)(f"{e}. ({entry.name!r} is not in the devices file and adb does not list it either)"
                          ) from None
        raise


@dataclass
class BoardModel:
    """A model only a board runs: a vendor .rknn (on the NPU through rknn-toolkit-lite2, with the host-side tail
    `openrknn vendor-export` wrote next to it) or an int8 .tflite (LiteRT, on the NPU through Teflon)."""

    kind: str  # 'vendor' | 'tflite'
    data: bytes
    post: bytes = b""  # a vendor model's .post.onnx
    source: str = ""

    @classmethod
    def from_file(cls, path, post: Optional[str] = None) -> "BoardModel":
        """Read a vendor .rknn (its `<path>.post.onnx` is picked up when it exists, or give `post`) or a .tflite."""
        from ..errors import PackageError
        from .server.backends import kind_of

        path = Path(path)
        data = path.read_bytes()
        kind = kind_of(data)
        if kind == "openrknn":
            raise PackageError(f"{path} is neither a vendor .rknn nor a .tflite; read an openrknn package with "
                               "read_package() (RKNN.load_rknn)")
        tail = Path(post) if post else Path(str(path) + ".post.onnx")
        if kind != "vendor" and post:
            raise PackageError(f"{path} is a {kind} model; a .post.onnx tail belongs only with a vendor .rknn")
        return cls(kind, data, tail.read_bytes() if kind == "vendor" and tail.is_file() else b"", str(path))


def connect_board(target: str, device_id: Optional[str], package: Union[RknnPackage, BoardModel],
                  devices_path: Optional[Path] = None) -> RemoteRuntime:
    """init_runtime(target, device_id): load `package` on the board and return its runtime. An openrknn package runs
    there on onnxruntime; a BoardModel (vendor .rknn, .tflite) on the runtime the board has for it."""
    entry = resolve_device(device_id, devices_path=devices_path)
    if isinstance(package, BoardModel):
        client = open_client(entry)
        try:
            runtime = open_model(client, package.data, P.model_key(package.data, package.post),
                                 {"kind": package.kind}, post=package.post, kind=package.kind)
        except BaseException:
            client.close()
            raise
        log.info("%s model %s on %s (%s)", package.kind, "found" if runtime.shared else "uploaded", client.where(),
                 f"{(len(package.data) + len(package.post)) / 1e6:.2f} MB")
        return runtime
    built_for = [t.lower() for t in package.metadata.get("target_platform") or []]
    if target and built_for and str(target).lower() not in built_for:
        log.warning("init_runtime(target=%r): the model was built for %s. The board runs it with onnxruntime on its "
                    "CPU either way; rebuild with config(target_platform=%r) for that chip's checks and estimates",
                    target, ", ".join(built_for), target)
    if target and entry.target and str(target).lower() != entry.target.lower():
        log.warning("init_runtime(target=%r) but the devices file says %s is a %s", target, entry.name, entry.target)
    data = package_to_bytes(package)
    client = open_client(entry)
    try:
        runtime = open_model(client, data, P.model_key(data), package.metadata)
    except BaseException:
        client.close()
        raise
    log.info("model %s on %s (%s)", "found" if runtime.shared else "uploaded", client.where(),
             f"{len(data) / 1e6:.2f} MB")
    return runtime


# ---------------------------------------------------------------- listing


def probe(entry: DeviceEntry, timeout: float = 1.0) -> str:
    """'' when the device's server accepts us, else why not (one line)."""
    try:
        client = open_client(entry, connect_timeout=timeout)
    except (P.RemoteError, DevicesFileError) as e:
        return f"{type(e).__name__}: {e}"
    d = client.device
    client.close()
    return "" if d else "no device facts"


def list_devices(devices_path: Optional[Path] = None, probe_timeout: float = 1.0, print_table: bool = True
                 ) -> List[str]:
    """Device ids usable as init_runtime(device_id=...) right now: the devices-file names whose server answered and
    accepted the token, then the adb serials in the 'device' state that no entry names. Returns a list of str.
    Prints (like the vendor's list_devices) every configured device with its reachability, and the adb devices."""
    path = devices_path or devices_file_path()
    devices = load_devices(path)
    with ThreadPoolExecutor(max_workers=min(8, max(1, len(devices)))) as pool:
        problems = dict(zip(devices, pool.map(lambda e: probe(e, probe_timeout), devices.values())))
    serials = adb_devices()
    covered = {e.adb_serial for e in devices.values() if e.adb_serial}
    usable = [n for n, why in problems.items() if not why] + [s for s in serials if s not in covered]
    if print_table:
        lines = ["*" * 60, f"openrknn boards in {path}:" if devices else f"no devices file entries ({path})"]
        for name, e in devices.items():
            lines.append(f"  {name:<20} {e.address:<24} " + ("reachable" if not problems[name]
                                                              else "NOT usable: " + problems[name][:160]))
        if adb_executable():
            lines.append(f"adb devices: {', '.join(serials) if serials else 'none'}")
        else:
            lines.append("adb: not installed")
        lines.append("*" * 60)
        print("\n".join(lines))
    return usable
