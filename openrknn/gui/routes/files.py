"""Downloads: only files this session produced, resolved inside its outputs folder."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse

from ..context import CurrentSession
from ..sessions import RequestRefused, contained_path

router = APIRouter()


@router.get("/api/download/{name:path}")
def download(request: Request, name: str, session: CurrentSession):
    path = contained_path(session.outputs, name)
    if not path.is_file():
        raise RequestRefused(404, f"'{name}' does not exist in this session; build or export it first")
    media = "image/png" if path.suffix.lower() == ".png" else "application/octet-stream"
    inline = request.query_params.get("inline") == "1" and media.startswith("image/")
    return FileResponse(path, media_type=media, filename=path.name,
                        content_disposition_type="inline" if inline else "attachment")
