"""fer live's web page: the door the command line goes through (the rest is inside).

    session = LiveSession(source, model, LiveConfig(...), escape)
    sock = bind_socket(host, port, allow_remote); access = access_for(sock)
    session.start(); serve(session, sock, access, on_started=...)

Imported on first use: the server needs the 'live' extra (Starlette, uvicorn).
"""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fercli.web.access import access_for, bind_socket
    from fercli.web.live import LiveConfig, LiveSession, redact
    from fercli.web.server import serve

DOOR = {
    "LiveConfig": "fercli.web.live",
    "LiveSession": "fercli.web.live",
    "redact": "fercli.web.live",
    "access_for": "fercli.web.access",
    "bind_socket": "fercli.web.access",
    "serve": "fercli.web.server",
}

__all__ = ["LiveConfig", "LiveSession", "redact", "access_for", "bind_socket", "serve"]


def __getattr__(name: str):
    import importlib

    if name in DOOR:
        return getattr(importlib.import_module(DOOR[name]), name)
    raise AttributeError(f"module 'fercli.web' has no attribute {name!r}")
