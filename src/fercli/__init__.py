"""fercli: facial expression recognition from the command line.

The public door: the functions the commands use (fercli.api) and the types a caller meets
(settings, models, reports, errors), each imported on first use so that `import fercli` and
`fer --help` stay quick. docs/python.md describes every name of __all__.
"""

import os
from typing import TYPE_CHECKING

# OpenCV's own backstop against huge images, for formats whose header fercli does not parse
# (only lowering its default of 2**30 pixels). OpenCV reads the variable once, when cv2 is
# first imported, so it is set here, before any fercli module imports cv2.
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(2**27))
# FFmpeg's complaints about a damaged video ("[mjpeg @ 0x...] overread 8") would go straight
# to stderr: fercli reports the damage itself, in one line. 0 is FFmpeg's AV_LOG_PANIC.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "0")

from fercli.core.version import VERSION

__version__ = VERSION

if TYPE_CHECKING:  # what IDEs and type checkers see; at run time __getattr__ imports lazily
    from fercli.api import (
        align_faces,
        crossval,
        evaluate_model,
        label_faces,
        label_media,
        list_home,
        load_model,
        prepare_dataset,
        remove_entries,
        sweep_recipes,
        train,
    )
    from fercli.core.config import PreprocessConfig, ScanConfig, TrainConfig
    from fercli.core.errors import (
        DatasetError,
        FerError,
        ImageError,
        ModelError,
        NoFaceError,
        SettingError,
        StoreError,
        TrainingError,
    )
    from fercli.core.events import Event
    from fercli.data.inventory import Entry, Inventory
    from fercli.data.prepared import PreprocessReport
    from fercli.faces.align import AlignedFace
    from fercli.infer.files import MediaReport
    from fercli.infer.label import FacePrediction
    from fercli.infer.model import FerModel
    from fercli.infer.tracking import VideoConfig
    from fercli.learn.reports import CrossvalReport, EvaluationReport
    from fercli.learn.sweep import SweepReport
    from fercli.learn.training import TrainResult

# The functions (fercli.api).
FUNCTIONS = (
    "align_faces",
    "crossval",
    "evaluate_model",
    "label_faces",
    "label_media",
    "list_home",
    "load_model",
    "prepare_dataset",
    "remove_entries",
    "sweep_recipes",
    "train",
)
# The types, each from the module that defines it (so that fercli.TrainConfig does not import
# OpenCV, nor fercli.FerError the whole API).
TYPES = {
    "TrainConfig": "fercli.core.config",
    "PreprocessConfig": "fercli.core.config",
    "ScanConfig": "fercli.core.config",
    "VideoConfig": "fercli.infer.tracking",
    "Event": "fercli.core.events",
    "FerError": "fercli.core.errors",
    "ImageError": "fercli.core.errors",
    "NoFaceError": "fercli.core.errors",
    "DatasetError": "fercli.core.errors",
    "ModelError": "fercli.core.errors",
    "SettingError": "fercli.core.errors",
    "StoreError": "fercli.core.errors",
    "TrainingError": "fercli.core.errors",
    "FerModel": "fercli.infer.model",
    "FacePrediction": "fercli.infer.label",
    "AlignedFace": "fercli.faces.align",
    "MediaReport": "fercli.infer.files",
    "PreprocessReport": "fercli.data.prepared",
    "TrainResult": "fercli.learn.training",
    "CrossvalReport": "fercli.learn.reports",
    "EvaluationReport": "fercli.learn.reports",
    "SweepReport": "fercli.learn.sweep",
    "Inventory": "fercli.data.inventory",
    "Entry": "fercli.data.inventory",
}

# Written out (not FUNCTIONS + TYPES) so that linters and type checkers read it.
__all__ = [
    "align_faces",
    "crossval",
    "evaluate_model",
    "label_faces",
    "label_media",
    "list_home",
    "load_model",
    "prepare_dataset",
    "remove_entries",
    "sweep_recipes",
    "train",
    "TrainConfig",
    "PreprocessConfig",
    "ScanConfig",
    "VideoConfig",
    "Event",
    "FerError",
    "ImageError",
    "NoFaceError",
    "DatasetError",
    "ModelError",
    "SettingError",
    "StoreError",
    "TrainingError",
    "FerModel",
    "FacePrediction",
    "AlignedFace",
    "MediaReport",
    "PreprocessReport",
    "TrainResult",
    "CrossvalReport",
    "EvaluationReport",
    "SweepReport",
    "Inventory",
    "Entry",
]


def __getattr__(name: str):
    import importlib

    if name in FUNCTIONS:
        return getattr(importlib.import_module("fercli.api"), name)
    if name in TYPES:
        return getattr(importlib.import_module(TYPES[name]), name)
    raise AttributeError(f"module 'fercli' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
