"""fercli: facial expression recognition from the command line."""

import os

# OpenCV's own backstop against huge images, for formats whose header fercli does not parse
# (only lowering its default of 2**30 pixels). OpenCV reads the variable once, when cv2 is
# first imported, so it is set here, before any fercli module imports cv2.
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(2**27))

__version__ = "0.1.0"
