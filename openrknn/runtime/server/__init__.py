"""The openrknn runtime server: runs .rknn models for remote clients (`openrknn serve`, `python -m
openrknn.runtime.server`).

It runs on the board (any Linux with Python, numpy and onnxruntime) and imports nothing else: the standard library,
numpy, onnxruntime, the container reader, the simulator and openrknn.errors. docs/protocol.md specifies the wire
protocol; this package is its reference server:

- config.py      ServerConfig, the start-up checks (address, token, limits), the token file
- tcp.py         the listening socket, one thread per connection, serve()
- admission.py   the two connection budgets: still authenticating (pending) and authenticated (clients)
- connection.py  one connection: handshake, request loop, the operations
- registry.py    the models held, shared by content; reading a model file a client names
- facts.py       the machine's facts (handshake, `info`); profiling.py: per-layer timings (`perf`)
- main.py        the command line
"""

from .config import MIN_REMOTE_TOKEN, ServerConfig, ServerSetupError, check_config, is_loopback, load_token
from .main import add_arguments, main, run_from_args
from .profiling import parse_profile
from .tcp import RuntimeServer, make_server, serve

__all__ = ["MIN_REMOTE_TOKEN", "RuntimeServer", "ServerConfig", "ServerSetupError", "add_arguments", "check_config",
           "is_loopback", "load_token", "main", "make_server", "parse_profile", "run_from_args", "serve"]
