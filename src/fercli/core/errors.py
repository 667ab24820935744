"""Typed errors whose messages a user can act on; the CLI prints them as one line."""


class FerError(Exception):
    """Base class: anything the user can fix (bad input, missing data, wrong option)."""


class ImageError(FerError):
    """A file that cannot be read as an image."""


class NoFaceError(FerError):
    """An image in which no face was found."""


class LayoutError(FerError):
    """A dataset folder that is missing, empty or in no layout we know."""


class DatasetError(FerError):
    """A preprocessed dataset that is missing or unusable for what was asked."""


class ModelError(FerError):
    """A model file that is missing, damaged or incompatible."""


class NoModelError(ModelError):
    """No model was named and none has been trained (FER_HOME holds no model file)."""


class StoreError(FerError):
    """The place where fercli keeps its files cannot be written."""


class TrainingError(FerError):
    """Training that gave no usable network: it diverged (the loss or weights stopped being
    finite numbers)."""


class GridError(FerError):
    """A sweep's grid file that cannot be a sweep (unknown setting, wrong type, nothing to vary)."""


class EngineError(FerError):
    """Folds cannot run where asked: Ray missing, a cluster that does not answer or runs other
    code."""


class SettingError(FerError, ValueError):
    """A setting outside what it may be (a choice not offered, a number out of range): the
    same refusal from the command line, a sweep grid and the Python API."""
