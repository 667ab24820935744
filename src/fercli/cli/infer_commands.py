"""fer predict and fer live: parse, call the library, hand the result to render_media."""

from __future__ import annotations

import contextlib
from pathlib import Path

import typer
import typer.core
import typer.rich_utils

from fercli.cli.app import (
    AdaptPixels,
    adapt_mode,
    err,
    escaped,
    fail,
    out,
    progress_bar,
    shown,
    user_errors,
)
from fercli.cli.options import (
    AdaptPixelsOption,
    FaceCropsOption,
    ModelOption,
    video_options,
    video_progress,
)
from fercli.cli.render_media import (
    passed_over,
    plural,
    render_annotated,
    render_explained,
    render_media,
    render_media_problems,
    render_media_summary,
    render_training_notes,
    render_unchecked_note,
    render_write_failures,
)


def predict(
    paths: list[Path] = typer.Argument(
        ..., metavar="PATHS...", help="Image and video files, and folders."
    ),
    model: Path | None = ModelOption,
    as_json: bool = typer.Option(
        False,
        "--json",
        help="Print JSON: a list of {path, model, faces: [{box, label, probabilities}]} "
        "(a video: {path, model, fps, frames, tracks: [{id, frames: [{frame, time, box, label, "
        "probabilities}]}]}); model: the model file that labelled them.",
    ),
    as_csv: bool = typer.Option(
        False,
        "--csv",
        help="Print CSV, one row per face (videos: per face per analysed frame); the last "
        "column names the model file.",
    ),
    all_scores: bool = typer.Option(
        False,
        "--all-scores",
        help="Show every class's probability for each face in the table, a column each "
        "(--json and --csv always have them; a video's track table has every class).",
    ),
    annotate_dir: Path | None = typer.Option(
        None,
        "--annotate",
        help="Write copies of the images with boxes and labels here "
        "(videos: an annotated .avi and a .timeline.png each).",
    ),
    explain_dir: Path | None = typer.Option(
        None,
        "--explain",
        help="Write a picture of where the network looks for each face here: its aligned "
        "crop under an occlusion heat map, with label and probability (videos: each track "
        "at its most confident frame).",
    ),
    workers: int | None = typer.Option(
        None,
        min=1,
        help="Processes for many images, and for a long video, a part each (default: one "
        "per core).",
    ),
    every: int = typer.Option(1, min=1, help="Videos: analyse one frame in every N."),
    fps: float | None = typer.Option(
        None, help="Videos: analyse this many frames a second instead of --every."
    ),
    detect_every: int = typer.Option(
        5,
        min=1,
        help="Videos: a full face detection every K analysed frames; in "
        "between, faces are followed by their landmarks (1: detect on every frame).",
    ),
    smooth: float = typer.Option(
        0.0,
        min=0.0,
        help="Videos: also give each track's probabilities averaged over "
        "this many seconds (0: off; the raw values stay).",
    ),
    adapt: bool = typer.Option(
        False,
        "--adapt",
        help="Adapt the model to the faces being labelled (the photos' together, each "
        "video's own; at least 20 distinct faces) before labelling them: their per-pixel mean "
        "mapped onto the training crops', the normalisation and batch normalisation "
        "statistics re-estimated. For photos from another camera.",
    ),
    adapt_pixels: AdaptPixels | None = AdaptPixelsOption,
    face_crops: bool = FaceCropsOption,
) -> None:
    """Label the expression of every face in photos and videos."""
    if as_json and as_csv:
        raise fail("choose one of --json and --csv", as_json=True)
    with user_errors(as_json):
        media = _label_media(
            paths,
            as_json or as_csv,
            model=model,
            options=video_options(every, fps, detect_every, smooth),
            workers=workers,
            annotate=annotate_dir,
            explain=explain_dir,
            adapt=adapt_mode(adapt, adapt_pixels),
            face_crops=face_crops,
        )
    _finish_predict(media, as_json, as_csv, all_scores, annotate_dir, explain_dir)


def _label_media(paths: list[Path], machine_readable: bool, **labelling):
    """The library's labels of the photos and videos (api.label_media, given labelling's
    keyword arguments), under progress bars on a terminal: the photos' (for a folder or
    several files) and each video's; none with --json or --csv (machine_readable)."""
    from fercli.api import label_media

    bar, update = progress_bar("predicting")
    # The images' bar; a long video still gets its own, except with --json or --csv.
    quiet = machine_readable or len(paths) == 1 and not Path(paths[0]).is_dir()
    if quiet:
        bar.update(bar.tasks[0].id, visible=False)
    with bar if not machine_readable else contextlib.nullcontext():
        return label_media(
            paths,
            progress=None if quiet else update,
            video_progress=None if machine_readable else video_progress(bar),
            **labelling,
        )


def _finish_predict(
    media,
    as_json: bool,
    as_csv: bool,
    all_scores: bool,
    annotate_dir: Path | None,
    explain_dir: Path | None,
) -> None:
    """What predict prints of the labelled media (results, problems, pictures written, notes,
    summary), and its failure: nothing processed, or a picture that could not be written."""
    failure = (
        None
        if media.processed
        else f"no image{' or video' if media.videos else ''} could be processed"
    )
    render_media(media, as_json, as_csv, failure, all_scores)
    render_media_problems(media)
    if annotate_dir:
        render_annotated(media, annotate_dir)
    if explain_dir:
        render_explained(media, explain_dir)
    if not as_json:
        render_training_notes(media, as_csv)
        render_unchecked_note(media, as_csv)
    listed, others = passed_over(media)
    if failure:
        raise fail(failure + (f" ({others})" if others else ""))
    if not as_json:
        render_media_summary(media, listed, others, as_csv)
    last = render_write_failures(media)
    if last:  # a picture lost to a full disk is a failed run, whatever else was written
        raise fail(last, as_json=False)


def live(
    source: str = typer.Argument(
        "0", help="A camera index, a video file or a stream URL OpenCV opens."
    ),
    model: Path | None = ModelOption,
    host: str = typer.Option(
        "127.0.0.1",
        help="Address to serve the page on (anything but a loopback address needs --allow-remote).",
    ),
    port: int = typer.Option(
        8017, min=0, max=65535, help="Port to serve the page on (0: any free one)."
    ),
    allow_remote: bool = typer.Option(
        False,
        "--allow-remote",
        help="Allow a --host that other machines reach (0.0.0.0: every network); every request "
        "then needs the token in the printed URL.",
    ),
    detect_every: int = typer.Option(
        5,
        min=1,
        help="A full face detection every K frames; in between, faces "
        "are followed by their landmarks.",
    ),
    record: Path | None = typer.Option(
        None, help="Also write the per-frame CSV of fer predict --csv to this new file."
    ),
    loop: bool = typer.Option(
        False,
        help="A video file starts again at its end. Without it, fer live (and its page) "
        "ends when the file ends: open the page before, or use --loop.",
    ),
    smooth: float = typer.Option(
        0.0,
        min=0.0,
        help="Show each face's probabilities averaged over its last this many seconds (0: "
        "off; --record then adds the averaged columns beside the raw ones).",
    ),
) -> None:
    """Label a camera, video file or stream live, on a local web page (the 'live' extra)."""
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise fail("fer live needs its web server: pip install 'fercli[live]'") from None
    with user_errors():
        from fercli.web import LiveConfig, LiveSession, access_for, bind_socket, redact

        loaded = _live_model(model)
        sock = bind_socket(host, port, allow_remote)
        try:
            session = LiveSession(
                source,
                loaded,
                LiveConfig(detect_every=detect_every, loop=loop, record=record, smooth=smooth),
                escaped,
            )
        except BaseException:
            sock.close()
            raise
        access = access_for(sock)
        _serve_live(
            session,
            sock,
            access,
            f"{shown(redact(source))} with {shown(Path(str(loaded.path)).name)}",
        )
    state = session.state()
    if state["status"] == "failed":
        raise fail(state["error"] or "the source failed")
    out.print(
        f"fer live: {shown(state['source'])} "
        f"{'ended' if state['status'] == 'ended' else 'stopped'} after "
        f"{plural(state['frame'], 'frame')}" + (f"; recorded in {shown(record)}" if record else "")
    )


def _live_model(model: Path | None):
    from fercli.api import load_model

    return load_model(model)


def _serve_live(session, sock, access, what: str) -> None:
    """Serve a session until it ends or Ctrl-C, saying where (and, served beyond this
    machine, warning that it is)."""
    from fercli.core.errors import FerError
    from fercli.web import serve

    if access.token:
        err.print(
            "[yellow]warning:[/yellow] the page and its camera are served beyond this machine; "
            "anyone with the URL below (it holds a token) can watch"
        )
    if session.note:
        err.print(f"note: {shown(session.note)}")
    urls = " or ".join(shown(url) for url in access.urls)

    def started() -> None:
        out.print(f"fer live: {what} on {urls} (Ctrl-C to stop)")

    try:
        session.start()
        serve(session, sock, access, on_started=started)
    except OSError as error:
        raise FerError(f"the web server failed: {error.strerror or error}") from None
    finally:
        session.stop()
        sock.close()
