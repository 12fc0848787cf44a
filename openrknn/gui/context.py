"""What every route shares: the app's context (settings, sessions, the job runner, the simulators), the request's
session, a JSON body, and the session's state as the page sees it. Routes take them as FastAPI dependencies."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Optional

from fastapi import Depends, Request
from fastapi.templating import Jinja2Templates

from .guard import GuiSettings
from .infer import SimulatorCache, yolox_layout
from .jobs import JobRunner
from .pipeline import jsonable
from .sessions import SESSION_COOKIE, RequestRefused, Session, SessionStore, redact_folder, redact_json

HERE = Path(__file__).resolve().parent


@dataclass
class GuiContext:
    settings: GuiSettings
    store: SessionStore
    runner: JobRunner
    sims: SimulatorCache
    templates: Jinja2Templates

    @classmethod
    def create(cls, settings: GuiSettings) -> "GuiContext":
        return cls(settings=settings, store=SessionStore(settings.workdir), runner=JobRunner(), sims=SimulatorCache(),
                   templates=Jinja2Templates(directory=str(HERE / "templates")))

    def state_of(self, session: Session) -> dict:
        """What the page shows: the picked model, calibration data, current .rknn, the last build's result and
        inference, and the form as the page last saved it. Session folders appear as what the user knows them as."""
        with session.lock:
            model = dict(session.model) if session.model else None
            if model and model.get("source") == "upload":
                model.pop("path", None)  # the page does not need to know where the session folder is
            rknn = session.rknn
            meta = None
            if rknn and session.model and session.model.get("framework") == "rknn":
                meta = (session.model.get("summary") or {})
            elif session.result:
                meta = session.result.get("summary")
            yolox = yolox_layout(meta.get("inputs") or [], meta.get("outputs") or []) if meta else None
            state = {"model": model, "dataset": session.dataset, "rknn": rknn, "result": session.result,
                     "yolox": yolox, "busy": self.runner.busy(), "form": session.form, "inference": session.inference,
                     "rebuild": bool(session.built_with and session.result), "uploading": session.uploading,
                     "job": self.runner.active_job(session.key)}
            return redact_json(jsonable(state), session.redact)

    def redact(self, text: str, session: Optional[Session] = None) -> str:
        """An error message fit for the page: no session folder, no work folder."""
        if session is not None:
            text = session.redact(text)
        return redact_folder(text, self.settings.workdir, {})


def gui_context(request: Request) -> GuiContext:
    return request.app.state.gui


def session_or_none(request: Request) -> Optional[Session]:
    return request.app.state.gui.store.get(request.cookies.get(SESSION_COOKIE))


def current_session(request: Request) -> Session:
    session = request.app.state.gui.store.get(request.cookies.get(SESSION_COOKIE))
    if session is None:
        raise RequestRefused(401, "no GUI session (the server restarted or cookies are off); reload the page")
    return session


async def json_body(request: Request) -> dict:
    try:
        data = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RequestRefused(400, "the request body is not JSON") from None
    if not isinstance(data, dict):
        raise RequestRefused(400, "the request body must be a JSON object")
    return data


Ctx = Annotated[GuiContext, Depends(gui_context)]
CurrentSession = Annotated[Session, Depends(current_session)]
JsonBody = Annotated[dict, Depends(json_body)]
MaybeSession = Annotated[Optional[Session], Depends(session_or_none)]
