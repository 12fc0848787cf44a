"""The GUI's routes, one router per area of the page. Each takes what it shares with the others (the app context,
the request's session, a JSON body) as FastAPI dependencies from ..context."""

from . import build, dataset, files, infer, layers, models, page

ROUTERS = [page.router, models.router, dataset.router, build.router, files.router, infer.router, layers.router]
