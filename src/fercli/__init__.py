"""fercli: facial expression recognition from the command line."""

import os

# OpenCV's own backstop against huge images, for formats whose header fercli does not parse
# (only lowering its default of 2**30 pixels). OpenCV reads the variable once, when cv2 is
# first imported, so it is set here, before any fercli module imports cv2.
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(2**27))
# FFmpeg's complaints about a damaged video ("[mjpeg @ 0x...] overread 8") would go straight
# to stderr: fercli reports the damage itself, in one line. 0 is FFmpeg's AV_LOG_PANIC.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "0")

from fercli.core.version import VERSION

__version__ = VERSION

# The library's public functions (fercli.api), imported on first use so that `import fercli`
# and `fer --help` stay quick.
__all__ = [
    "align_faces",
    "crossval",
    "evaluate_model",
    "label_faces",
    "label_media",
    "load_model",
    "prepare_dataset",
    "sweep_recipes",
    "train",
]


def __getattr__(name: str):
    if name in __all__:
        from fercli import api

        return getattr(api, name)
    raise AttributeError(f"module 'fercli' has no attribute {name!r}")
