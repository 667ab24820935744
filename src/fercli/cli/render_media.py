"""What fer predict prints for photos and videos: tables, CSV and lines, no work."""

from __future__ import annotations

import sys
from pathlib import Path

from rich.table import Table

from fercli.cli.app import emit_json, err, escaped, out, shown
from fercli.core.labels import describe_shares


def render_media(
    media, as_json: bool, as_csv: bool, failure: str | None, all_scores: bool = False
) -> None:
    """predict's results on stdout: JSON, CSV, or tables (all_scores: every class's
    probability for each face of the photos)."""
    report = media.images
    if as_json and failure:
        emit_json(
            {
                "error": failure,
                "model": report.model,
                "images": [media.item_json(item) for item in [*report.images, *media.videos]],
                "skipped": [
                    {"path": problem.path, "reason": problem.reason} for problem in report.problems
                ],
            }
        )
    elif as_json:
        emit_json(media.to_json())
    elif as_csv:
        render_csv(media)
    else:
        if report.processed:
            render_predict(report, all_scores)
        elif any(video.processed for video in media.videos):
            # The photos' table names the model in its title; videos alone get the line.
            out.print(f"model {shown(Path(report.model).name)}")
        render_videos(media)


def render_media_problems(media) -> None:
    """What predict skipped and why, and its notes, on stderr."""
    report = media.images
    for problem in report.problems:
        if problem.listed:
            err.print(f"[yellow]skipped[/yellow] {shown(problem.path)}: {problem.reason}")
    for image in report.images:
        if image.error:
            err.print(f"[yellow]skipped[/yellow] {shown(image.path)}: {shown(image.error)}")
    for video in media.videos:
        if video.error:
            err.print(
                f"[yellow]{'error in' if video.processed else 'skipped'}[/yellow] "
                f"{shown(video.path)}: "
                f"{shown(video.error)}"
            )
        if video.note:
            err.print(f"note: {shown(video.path)}: {shown(video.note)}")
    for note in report.notes:
        err.print(f"note: {shown(note)}")


def render_training_notes(media, as_csv: bool) -> None:
    """A note for each image the model was trained on: its label is no test of the model."""
    for image in media.images.images:
        if any(face.in_training_data for face in image.faces):
            (err if as_csv else out).print(
                f"note: {shown(image.path)} was in this model's training data: "
                "its score says nothing about new faces"
            )


def render_unchecked_note(media, as_csv: bool) -> None:
    """A note of the faces --face-crops had labelled though the face check turned them down."""
    unchecked = sum(not face.face_check for image in media.images.images for face in image.faces)
    if unchecked:
        (err if as_csv else out).print(
            f"note: {plural(unchecked, 'face')} labelled on the word of --face-crops: the face "
            "check turned them down (a face turned or covered, or no face at all)"
        )


def render_annotated(media, annotate_dir: Path) -> None:
    if media.images.images:  # a run of videos alone has no annotated images to count
        err.print(f"{plural(len(media.annotated), 'annotated image')} in {shown(annotate_dir)}")
    if media.videos:
        videos_written = sum(1 for path in media.annotated_videos if path.suffix == ".avi")
        timelines = len(media.annotated_videos) - videos_written
        err.print(
            f"{plural(videos_written, 'annotated video')} and "
            f"{plural(timelines, 'timeline')} in {shown(annotate_dir)}"
        )


def render_explained(media, explain_dir: Path) -> None:
    """How many explanation pictures were written where; for videos, which frame each shows."""
    err.print(f"{plural(len(media.explained), 'explanation picture')} in {shown(explain_dir)}")
    for face in media.explained:
        if face.frame is not None:
            err.print(
                f"  {shown(Path(face.path).name)}: {shown(face.source)} track {face.face} at "
                f"frame {face.frame} ({face.time:.2f} s), its most confident"
            )


def render_media_summary(media, listed: int, others: str, as_csv: bool) -> None:
    """predict's last line: images and faces, videos and tracks, what was skipped."""
    report = media.images
    # Folders not read (loops, repeats, unreadable) are named on stderr; said apart from files.
    folders = sum(1 for problem in report.problems if problem.listed and problem.folder)
    skipped = listed - folders + len(report.images) - report.processed
    skipped += sum(1 for video in media.videos if not video.processed)
    faces = sum(len(image.faces) for image in report.images)
    analysed = [video for video in media.videos if video.processed]
    tracks = sum(len(video.tracks) for video in analysed)
    summary = "; ".join(
        filter(
            None,
            [
                f"{plural(report.processed, 'image')}, {plural(faces, 'face')}"
                if report.processed or not media.videos
                else "",
                f"{plural(len(analysed), 'video')}, {plural(tracks, 'track')}"
                if media.videos
                else "",
                f"{skipped} skipped" if skipped else "",
                f"{plural(folders, 'folder')} not read" if folders else "",
                others,
            ],
        )
    )
    render_answers(media, err if as_csv else out)
    (err if as_csv else out).print(summary)


def passed_over(media) -> tuple[int, str]:
    """How many of the photos' problems were listed (named on stderr, render_media_problems),
    and the files passed over in the folders as the summary says them ("" for none): "2 other
    files in the folders, not images"."""
    listed = sum(1 for problem in media.images.problems if problem.listed)
    others = len(media.images.problems) - listed
    if not others:
        return listed, ""
    return listed, (
        f"{plural(others, 'other file')} in the folders, not "
        f"{'an image' if others == 1 else 'images'}"
    )


def render_write_failures(media) -> str | None:
    """The pictures (annotated copies, explanations) that could not be written: every one but
    the last as an error line on stderr; the last returned, for the command to fail with."""
    failures = media.images.write_failures
    for line in failures[:-1]:
        err.print(f"[red]error:[/red] {shown(line)}")
    return failures[-1] if failures else None


def render_answers(media, console) -> None:
    """The share of each label among the photos' faces and among each video's (its frames
    show the same few people, so each video on its own), a warning when one label takes most
    of them, and what --adapt did."""
    several = len(media.answers) > 1 or bool(media.videos)
    for answers in media.answers:
        source = f"{shown(answers.source)}: " if several else ""
        console.print(f"answers: {source}{shown(describe_shares(answers.shares))}")
        if answers.warning:
            console.print(f"[yellow]warning:[/yellow] {source}{shown(answers.warning)}")
    adapted = [(photos_named(media), media.images.adaptation)] + [
        (video.path, video.adaptation) for video in media.videos
    ]
    for where, adaptation in adapted:
        if adaptation is not None:
            console.print(f"note: {shown(where)}: {shown(adaptation.describe())}")


def photos_named(media) -> str:
    """The photos of a run, as a note names them: "the photos in jaffe" (one folder given),
    the file (one file), else "the photos"."""
    videos = {video.path for video in media.videos}
    given = [path for path in media.images.inputs if path not in videos]
    if len(given) != 1:
        return "the photos"
    return f"the photos in {given[0]}" if Path(given[0]).is_dir() else given[0]


def plural(count: int, noun: str) -> str:
    """'1 image', '2 images', '2 classes'."""
    if count == 1:
        return f"{count} {noun}"
    # "epoch" is the one noun here ending in a hard ch: epochs, not epoches.
    return f"{count} {noun}{'es' if noun.endswith(('s', 'x', 'sh')) else 's'}"


def render_predict(report, all_scores: bool = False) -> None:
    """The photos' table, titled with the model: each face's box, label and probability
    (all_scores: every class's probability, a column each, after the label)."""
    table = Table(title=f"model {shown(Path(report.model).name)}")
    scores = [shown(label) for label in report.classes] if all_scores else ["p"]
    for column in ("image", "face", "box (x, y, w, h)", "label"):
        table.add_column(column, overflow="fold")
    for column in scores:
        table.add_column(column, overflow="fold", justify="right")
    for image in report.images:
        if image.error:
            continue
        if not image.faces:
            table.add_row(shown(image.path), "-", "no face found", "", *[""] * len(scores))
        for number, face in enumerate(image.faces, start=1):
            shown_scores = (
                [f"{face.probabilities[label]:.2f}" for label in report.classes]
                if all_scores
                else [f"{face.probabilities[face.label]:.2f}"]
            )
            table.add_row(
                shown(image.path),
                str(number),
                ", ".join(map(str, face.box)),
                shown(face.label),
                *shown_scores,
            )
    out.print(table)


def render_csv(media) -> None:
    """CSV on stdout (MediaReport.csv_rows); names escaped as in tables, so that no control
    byte reaches a terminal."""
    import csv

    csv.writer(sys.stdout).writerows(media.csv_rows(escaped))


def render_videos(media) -> None:
    """Per video: one row per track (frames seen, time on screen, share of each expression)."""
    classes = media.images.classes
    for video in media.videos:
        if not video.processed:
            continue
        duration = (
            f", {video.frames / video.fps:.1f} s at {video.fps:g} frames/s" if video.fps else ""
        )
        speed = (
            f" in {video.seconds:.1f} s ({video.analysed / video.seconds:.0f} frames/s)"
            if video.seconds > 0
            else ""
        )
        title = (
            f"{shown(video.path)}: {plural(video.frames, 'frame')}{duration}, {video.analysed} "
            f"analysed{speed}"
            f"{' (labels smoothed)' if video.smoothed else ''}"
        )
        table = Table(title=title)
        for column in ("track", "frames", "on screen", "seen", *classes):
            table.add_column(
                shown(column),
                justify="left" if column in ("track", "seen") else "right",
                overflow="fold",
            )
        if not video.tracks:
            table.add_row("-", "0", "", "no face found", *[""] * len(classes))
        for track in video.tracks:
            summary = track.summary(classes, video.interval)
            table.add_row(
                str(track.id),
                str(summary["frames_seen"]),
                f"{summary['seconds']:.1f} s",
                f"{summary['first']:.1f}-{summary['last']:.1f} s",
                *(f"{summary['shares'][label]:.0%}" for label in classes),
            )
        out.print(table)
