"""The web side of fer live (Starlette on uvicorn): the page, the MJPEG stream, the JSON state.

Imported only by fer live, and only when the 'live' extra is installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from fercli.web.access import TOKEN_COOKIE, Access
from fercli.web.live import LiveSession

STATIC = Path(__file__).resolve().parent / "static"
BOUNDARY = "fercliframe"
# How long a stream waits for a new frame before it looks again whether the session ended.
FRAME_WAIT = 0.5


class Guard:
    """ASGI middleware: a request is answered only with a Host header the Access allows (403
    otherwise: DNS rebinding) and, when the Access has a token, with that token as ?token= or
    as the cookie set on the first visit (403 otherwise)."""

    def __init__(self, app, access: Access) -> None:
        self.app = app
        self.access = access

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        if not self.access.host_allowed(request.headers.get("host")):
            refusal = PlainTextResponse("fer live: this address is not served here\n", 403)
            await refusal(scope, receive, send)
            return
        given = request.query_params.get("token")
        if not self.access.token_allowed(given or request.cookies.get(TOKEN_COOKIE)):
            refusal = PlainTextResponse(
                "fer live: open the page with the URL fer live printed (it holds the token)\n", 403
            )
            await refusal(scope, receive, send)
            return
        if given is None or self.access.token is None:
            await self.app(scope, receive, send)
            return

        async def send_with_cookie(message) -> None:
            if message["type"] == "http.response.start":
                cookie = f"{TOKEN_COOKIE}={self.access.token}; Path=/; HttpOnly; SameSite=Strict"
                message = {
                    **message,
                    "headers": [*message.get("headers", []), (b"set-cookie", cookie.encode())],
                }
            await send(message)

        await self.app(scope, receive, send_with_cookie)


def build_app(session: LiveSession, closing=lambda: False) -> Starlette:
    """The ASGI app serving one session: / (the page), /stream.mjpg, /state.json, /static/.
    closing(): true once the server stops, when the streams end (so that stopping does not
    have to cancel them)."""

    async def page(request):
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    async def state(request):
        return JSONResponse(session.state(), headers={"Cache-Control": "no-store"})

    async def frames():
        seen = 0
        while True:
            # The wait is a blocking one: in a worker thread, so the server keeps answering.
            number, jpeg, read_at = await asyncio.to_thread(session.wait_frame, seen, FRAME_WAIT)
            if number > seen and jpeg is not None:
                seen = number
                # X-Read-At: when the frame was read (Unix time), for bench/live.py's delay.
                yield (
                    f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n"
                    f"X-Read-At: {read_at:.6f}\r\n\r\n".encode()
                    + jpeg
                    + b"\r\n"
                )
            elif session.finished:
                return
            if closing():
                return

    async def stream(request):
        return StreamingResponse(
            frames(),
            media_type=f"multipart/x-mixed-replace; boundary={BOUNDARY}",
            headers={"Cache-Control": "no-store"},
        )

    return Starlette(
        routes=[
            Route("/", page),
            Route("/state.json", state),
            Route("/stream.mjpg", stream),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ]
    )


class _Server(uvicorn.Server):
    """uvicorn's server without its signal handling: uvicorn raises Ctrl-C again once it has
    stopped, which would end the process before the camera is released; serve() handles it."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield

    def install_signal_handlers(self) -> None:
        pass


# uvicorn's logging: one line for what goes wrong, no traceback for a client's malformed
# request or a connection cut short (those are the client's business, not the user's).
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"line": {"format": "fer live: %(message)s"}},
    "filters": {"no_traceback": {"()": "fercli.web.server.NoTraceback"}},
    "handlers": {
        "stderr": {
            "class": "logging.StreamHandler",
            "formatter": "line",
            "filters": ["no_traceback"],
            "stream": "ext://sys.stderr",
        }
    },
    "loggers": {
        "uvicorn": {"handlers": ["stderr"], "level": "ERROR", "propagate": False},
        "uvicorn.error": {"level": "ERROR"},
        "uvicorn.access": {"handlers": [], "level": "ERROR", "propagate": False},
    },
}


class NoTraceback:
    """A logging filter for uvicorn: a client's protocol error or a connection cut short (a
    malformed chunked body, a browser gone) is not the user's business and is dropped; anything
    else is kept as one line, the exception named, without its traceback."""

    def filter(self, record) -> bool:
        import h11

        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, h11.ProtocolError | ConnectionError | asyncio.CancelledError):
            return False
        message = record.getMessage().strip()
        if error is not None:
            message = f"{message}: {type(error).__name__}: {error}"
        record.msg, record.args = message.replace("\n", " "), None
        record.exc_info = record.exc_text = record.stack_info = None
        return True


def serve(
    session: LiveSession,
    sock,
    access: Access | None = None,
    on_started=None,
    linger: float = 1.5,
) -> None:
    """Serve the session on a bound socket until Ctrl-C, or until the source ends or fails
    (then linger seconds more, so that the page can say so). access: which requests are
    answered (default: those naming the socket's loopback address). on_started() is called
    once the server listens."""
    from fercli.web.access import access_for

    access = access or access_for(sock)
    closing = {"now": False}
    config = uvicorn.Config(
        Guard(build_app(session, lambda: closing["now"]), access),
        log_config=LOGGING,
        access_log=False,
        timeout_graceful_shutdown=FRAME_WAIT * 4,
        lifespan="off",
    )
    server = _Server(config)

    async def watch() -> None:
        while not server.started and not server.should_exit:
            await asyncio.sleep(0.05)
        if on_started and server.started:
            on_started()
        while not session.finished and not server.should_exit:
            await asyncio.sleep(0.1)
        if session.finished:
            await asyncio.sleep(linger)
        server.should_exit = True

    async def close_streams() -> None:
        # Open streams end by themselves within FRAME_WAIT once the server stops, so that
        # stopping with a browser connected cancels nothing.
        while not server.should_exit:
            await asyncio.sleep(0.05)
        closing["now"] = True

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for number in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(number, lambda: setattr(server, "should_exit", True))
        watcher = asyncio.create_task(watch())
        closer = asyncio.create_task(close_streams())
        try:
            await server.serve(sockets=[sock])
        finally:
            watcher.cancel()
            closer.cancel()

    asyncio.run(main())
