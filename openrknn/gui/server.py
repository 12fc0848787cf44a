"""Run the GUI in a background thread (tests, notebooks): `with BackgroundServer(settings) as url: ...`."""

from __future__ import annotations

import socket
import threading
import time
from typing import Optional

from ..errors import RuntimeStateError
from .app import GuiSettings, create_app


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class BackgroundServer:
    """uvicorn serving create_app(settings) on settings.host:settings.port (a free port when it is 0)."""

    def __init__(self, settings: Optional[GuiSettings] = None, start_timeout: float = 20.0):
        import uvicorn

        self.settings = settings or GuiSettings(port=0)
        if not self.settings.port:
            self.settings.port = free_port(self.settings.host)
        self.app = create_app(self.settings)
        config = uvicorn.Config(self.app, host=self.settings.host, port=self.settings.port, log_level="warning",
                                access_log=False, lifespan="on")
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.server.run, name="openrknn-gui-server", daemon=True)
        self.start_timeout = start_timeout

    @property
    def url(self) -> str:
        return f"http://{self.settings.host}:{self.settings.port}"

    def start(self) -> str:
        self._thread.start()
        deadline = time.monotonic() + self.start_timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeStateError(f"the GUI server did not start on {self.url} within {self.start_timeout:.0f} s "
                                        "(port taken?)")
            time.sleep(0.05)
        return self.url

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=10)

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
