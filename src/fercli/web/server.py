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
from starlette.responses import FileResponse, JSONResponse, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from fercli.web.live import LiveSession

STATIC = Path(__file__).resolve().parent / "static"
BOUNDARY = "fercliframe"
# How long a stream waits for a new frame before it looks again whether the session ended.
FRAME_WAIT = 0.5


def build_app(session: LiveSession) -> Starlette:
    """The ASGI app serving one session: / (the page), /stream.mjpg, /state.json, /static/."""

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


def serve(session: LiveSession, sock, on_started=None, linger: float = 1.5) -> None:
    """Serve the session on a bound socket until Ctrl-C, or until the source ends or fails
    (then linger seconds more, so that the page can say so). on_started() is called once the
    server listens."""
    config = uvicorn.Config(
        build_app(session),
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=1,
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

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for number in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(number, lambda: setattr(server, "should_exit", True))
        watcher = asyncio.create_task(watch())
        try:
            await server.serve(sockets=[sock])
        finally:
            watcher.cancel()

    asyncio.run(main())
