"""The devices file: names for boards running `openrknn serve`, with their address and token.

Where: $OPENRKNN_DEVICES, else $XDG_CONFIG_HOME/openrknn/devices.json, else ~/.config/openrknn/devices.json.
Format (JSON; docs/protocol.md, "Devices file"):

    {"devices": {
        "lab-1808": {"address": "192.168.1.20:8765", "token_file": "lab-1808.token", "target": "rk1808"},
        "usb-1808": {"adb": "0123456789ABCDEF", "port": 8765, "token": "..."}
    }}

A relative token_file is resolved against the devices file's folder. Without "token"/"token_file" the entry uses the
OPENRKNN_TOKEN environment variable. Client side only; the board never reads this file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

from ..errors import OpenRKNNError
from .protocol import DEFAULT_PORT

DEVICES_ENV = "OPENRKNN_DEVICES"
TOKEN_ENV = "OPENRKNN_TOKEN"
ENTRY_KEYS = ("address", "adb", "port", "token", "token_file", "target", "timeout", "connect_timeout")


class DevicesFileError(OpenRKNNError):
    """The devices file or one of its entries is not valid, or a device name/address cannot be understood."""


@dataclass(frozen=True)
class DeviceEntry:
    name: str
    host: Optional[str]  # None for an adb device until `adb forward` gives a local port
    port: int
    token: str = ""
    adb_serial: Optional[str] = None
    target: Optional[str] = None
    timeout: float = 60.0  # seconds per request (covers the board's inference time)
    connect_timeout: float = 5.0
    token_source: str = "none"

    @property
    def address(self) -> str:
        if self.adb_serial and self.host is None:
            return f"adb:{self.adb_serial}:{self.port}"
        return f"[{self.host}]:{self.port}" if self.host and ":" in self.host else f"{self.host}:{self.port}"


def devices_file_path() -> Path:
    env = os.environ.get(DEVICES_ENV)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "openrknn" / "devices.json"


def parse_address(text: str) -> Tuple[str, int]:
    """'host', 'host:port', '[v6]:port' or 'v6' -> (host, port)."""
    text = text.strip()
    if not text:
        raise DevicesFileError("empty device address; use 'host:port', e.g. '192.168.1.20:8765'")
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        port_s = rest[1:] if rest.startswith(":") else ""
        if not sep or (rest and not rest.startswith(":")):
            raise DevicesFileError(f"address {text!r} is not valid; use '[ipv6]:port'")
    elif text.count(":") == 1:
        host, port_s = text.split(":")
    else:  # a bare host, or an IPv6 address without port
        host, port_s = text, ""
    if not host:
        raise DevicesFileError(f"address {text!r} has no host; use 'host:port'")
    if not port_s:
        return host, DEFAULT_PORT
    if not port_s.isdigit() or not 0 < int(port_s) < 65536:
        raise DevicesFileError(f"address {text!r} has port {port_s!r}; a port is a number in 1..65535")
    return host, int(port_s)


def read_token_file(path: Path) -> str:
    try:
        token = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise DevicesFileError(f"token file {path} does not exist; copy it from the board (the file given to "
                               "`openrknn serve --token-file`)") from None
    except OSError as e:
        raise DevicesFileError(f"cannot read token file {path}: {e.strerror}") from e
    if not token:
        raise DevicesFileError(f"token file {path} is empty")
    return token


def env_token() -> Tuple[str, str]:
    token = os.environ.get(TOKEN_ENV, "").strip()
    return (token, f"${TOKEN_ENV}") if token else ("", "none")


def _number(name: str, key: str, value: object, path: Path) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise DevicesFileError(f"{path}: device {name!r}: {key}={value!r} must be a number of seconds > 0")
    return float(value)


def parse_entry(name: str, raw: object, path: Path) -> DeviceEntry:
    """One devices-file entry -> DeviceEntry, with errors naming the file, the device and the key."""
    if not isinstance(raw, dict):
        raise DevicesFileError(f"{path}: device {name!r} must be an object like {{\"address\": \"host:8765\"}}, "
                               f"got {raw!r:.60}")
    unknown = sorted(set(raw) - set(ENTRY_KEYS))
    if unknown:
        raise DevicesFileError(f"{path}: device {name!r} has unknown key(s) {unknown}; allowed: "
                               f"{', '.join(ENTRY_KEYS)}")
    if ("address" in raw) == ("adb" in raw):
        raise DevicesFileError(f"{path}: device {name!r} needs exactly one of 'address' (\"host:port\") or 'adb' "
                               "(an adb serial; the client runs `adb forward` to the server's port)")
    for key in ("address", "adb", "token", "token_file", "target"):
        if key in raw and not (isinstance(raw[key], str) and raw[key].strip()):
            raise DevicesFileError(f"{path}: device {name!r}: {key}={raw[key]!r} must be a non-empty string")
    host, adb = None, raw.get("adb")
    port = DEFAULT_PORT
    if "address" in raw:
        try:
            host, port = parse_address(raw["address"])
        except DevicesFileError as e:
            raise DevicesFileError(f"{path}: device {name!r}: {e}") from None
    if "port" in raw:
        p = raw["port"]
        if isinstance(p, bool) or not isinstance(p, int) or not 0 < p < 65536:
            raise DevicesFileError(f"{path}: device {name!r}: port={p!r} must be an int in 1..65535")
        port = p
    if "token" in raw:
        token, source = raw["token"].strip(), f"{path} (token)"
    elif "token_file" in raw:
        tf = Path(raw["token_file"]).expanduser()
        tf = tf if tf.is_absolute() else path.parent / tf
        token, source = read_token_file(tf), str(tf)
    else:
        token, source = env_token()
    kw = {}
    for key in ("timeout", "connect_timeout"):
        if key in raw:
            kw[key] = _number(name, key, raw[key], path)
    return DeviceEntry(name=name, host=host, port=port, token=token, adb_serial=adb, target=raw.get("target"),
                       token_source=source, **kw)


def load_devices(path: Optional[Path] = None) -> Dict[str, DeviceEntry]:
    """All entries of the devices file, by name; {} when the file does not exist."""
    path = Path(path) if path is not None else devices_file_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise DevicesFileError(f"cannot read devices file {path}: {e.strerror}") from e
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise DevicesFileError(f"devices file {path} is not valid JSON ({e}); see docs/protocol.md for the "
                               "format") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("devices"), dict):
        raise DevicesFileError(f"devices file {path} must be a JSON object with a \"devices\" object, e.g. "
                               '{"devices": {"board": {"address": "192.168.1.20:8765", "token_file": "board.token"}}}')
    return {name: parse_entry(name, raw, path) for name, raw in doc["devices"].items()}


def address_entry(device_id: str) -> DeviceEntry:
    """An ad-hoc entry for a 'host:port' device_id; the token comes from OPENRKNN_TOKEN."""
    host, port = parse_address(device_id)
    token, source = env_token()
    return DeviceEntry(name=device_id, host=host, port=port, token=token, token_source=source)
