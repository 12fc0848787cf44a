"""The conversion GUI: a local web app (FastAPI + uvicorn) that loads a model, validates config(), builds, exports,
runs the simulator and shows what happened. `openrknn gui` or `python -m openrknn.gui`.

The web stack is imported only when the GUI starts, so the rest of openrknn works without fastapi installed.
"""

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
