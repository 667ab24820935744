"""fer predict --explain: a picture of where the network looks for every face of the photos,
and for each track of the videos at its most confident analysed frame."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fercli.core.errors import FerError
from fercli.infer.explain import PATCH, FaceExplanation, explain_crops
from fercli.infer.model import FerModel

if TYPE_CHECKING:
    from fercli.infer.files import MediaReport
    from fercli.infer.photos import PredictReport


@dataclass
class ExplainedFace:
    """One explanation picture written."""

    source: str  # the photo or video
    face: int  # the face's number in the photo (from 1), or its track id in the video
    path: Path  # the picture
    label: str
    probability: float
    frame: int | None = None  # videos: the frame explained, and its time in seconds
    time: float | None = None


def explain_media(media: MediaReport, model: FerModel, folder: Path) -> list[ExplainedFace]:
    """Write an explanation picture (fercli.media.heatmaps.explanation_image) in folder for
    every face of media's photos (name.face1.png, ...) and for each track of its videos at the
    track's most confident analysed frame (name.track1.png, ...), the names mirroring the
    inputs' paths as --annotate's copies do. Never replaces a file (the next free name, with a
    note in media.images.notes); a picture that cannot be written is a failure of the run
    (media.images.write_failures), as an annotated copy is. media: a MediaReport whose photos
    kept their crops and whose videos kept each track's best face."""
    from fercli.infer.photos import annotated_name

    report = media.images
    written = []
    for image in report.images:
        if not image.crops:
            continue
        base = Path(folder) / annotated_name(image.path, report.inputs)
        explained = explain_crops(model, np.stack(image.crops), [f.box for f in image.faces])
        for number, face in enumerate(explained, start=1):
            x, y, width, height = face.box
            caption = f"face {number} of {Path(image.path).name}, box {x},{y} {width}x{height}"
            wanted = base.with_name(f"{base.stem}.face{number}.png")
            path = _write(face, caption, wanted, image.path, report)
            if path:
                record = ExplainedFace(image.path, number, path, face.label, face.probability)
                written.append(record)
    for video in media.videos:
        base = Path(folder) / annotated_name(video.path, report.inputs)
        for track_id, (record, crop) in sorted(video.best.items()):
            (face,) = explain_crops(model, crop[np.newaxis], [record.box])
            caption = (
                f"{Path(video.path).name} track {track_id}, frame {record.frame} "
                f"({record.time:.2f} s): its most confident"
            )
            wanted = base.with_name(f"{base.stem}.track{track_id}.png")
            path = _write(face, caption, wanted, video.path, report)
            if path:
                written.append(
                    ExplainedFace(
                        video.path,
                        track_id,
                        path,
                        face.label,
                        face.probability,
                        record.frame,
                        record.time,
                    )
                )
    return written


def _write(
    face: FaceExplanation, caption: str, wanted: Path, source: str, report: PredictReport
) -> Path | None:
    """The picture of one explained face at wanted, or the next free name (noted); None, with
    a failure in report, where it cannot be written."""
    from fercli.media.heatmaps import explanation_image
    from fercli.media.images import write_png

    picture = explanation_image(face.crop, face.map, face.label, face.probability, caption, PATCH)
    try:
        path = write_png(wanted, picture, keep_existing=True)
    except FerError as error:  # a sub-folder name taken by a file, a full disk
        report.write_failures.append(f"no explanation picture {wanted.name} for {source}: {error}")
        return None
    if path != wanted:
        report.notes.append(f"{wanted} exists: the explanation picture for {source} is {path}")
    return path
