"""The GUI's listening socket, bound before anything else is imported or printed: a taken port is a one-line
error, never a "running at" banner followed by a traceback. No web stack imported here."""

from __future__ import annotations

import errno
import socket

from ..errors import RuntimeStateError


def listen_socket(host: str, port: int) -> socket.socket:
    """A socket bound to host:port before anything is announced, so a taken port is a clear error, not a banner
    followed by a traceback."""
    try:
        family, _, _, _, address = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                                       flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as e:
        raise RuntimeStateError(f"cannot listen on '{host}': the name does not resolve ({e.strerror}); give an "
                                "address of this machine with --host, e.g. 127.0.0.1") from None
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart does not wait for TIME_WAIT
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            why = (f"port {port} is already in use on {host} (another openrknn gui, or another program); stop it "
                   f"or pick another port with --port {port + 1 if port < 65535 else 8000}")
        elif e.errno == errno.EACCES:
            why = f"port {port} needs administrator rights here; pick a port above 1023 with --port"
        elif e.errno == errno.EADDRNOTAVAIL:
            why = f"{host} is not an address of this machine; give one with --host (default 127.0.0.1)"
        else:
            why = f"{e.strerror or e}"
        raise RuntimeStateError(f"the GUI cannot listen on {host}:{port}: {why}") from None
    sock.set_inheritable(True)
    return sock
