"""The settings of each step as frozen dataclasses (preprocessing, dataset scanning,
training) and the values they may take; the named recipes are in core.recipes."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields

from fercli.core.errors import SettingError
from fercli.core.settings import (
    check_settings,
    check_switches,
    plain,
    setting,
    settings_of,
)

# Bumped whenever the alignment code changes what it produces for the same settings, so that
# cached crops and trained models made by an older implementation are not silently reused.
# 2: the histogram equalization counts only pixels inside the photo (see PreprocessConfig).
ALIGN_VERSION = 2

CROP_SIZE = 32


def fingerprint(payload: object) -> str:
    """A short, stable hash of a JSON-serialisable value."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class JsonConfig:
    """Settings that travel as JSON (cache keys, model files, reports): tuples as lists."""

    def to_dict(self) -> dict:
        return {
            key: list(value) if isinstance(value, tuple) else value
            for key, value in asdict(self).items()
        }

    @classmethod
    def from_dict(cls, data: dict):
        """Settings from JSON; keys this version does not know are ignored."""
        known = {item.name for item in fields(cls)}
        return cls(
            **{
                key: tuple(value) if isinstance(value, list) else value
                for key, value in data.items()
                if key in known
            }
        )


# "face": equalizeHist's mapping from the pixels inside the photo; "midpoint": the same
# pixels, each grey level to the middle of its rank range, so that a large patch of one level
# (skin clipped to white by the camera) is not pushed to 255; "clahe": OpenCV's CLAHE (clip
# limit 2, 4x4 tiles); "whole": equalizeHist over the whole crop, border included (alignment
# version 1); "none".
EQUALIZATIONS = ("face", "midpoint", "clahe", "whole", "none")

# How the crop frames the face once the eyes are level. "paper": from top_margin eye
# distances above the eye line down to the chin, between the jaw points 0 and 16 (the paper's
# crop, stretched to a square). "wide": a square of WIDE_SIDE eye distances centred on the
# eyes, the eye line WIDE_EYE_LINE of its side from the top, which is how FER2013's and CK+48's
# own 48x48 images frame their faces (the medians over 400 and 300 of them: 2.71 and 2.72 eye
# distances a side, the eye line at 0.38 and 0.40 of the height); it keeps the forehead and the
# face's outline. Measured in docs/accuracy.md ("A general model").
FRAMINGS = ("paper", "wide")
WIDE_SIDE = 2.7
WIDE_EYE_LINE = 0.39


@dataclass(frozen=True)
class PreprocessConfig(JsonConfig):
    """How a photo becomes an aligned crop. Part of every cache key and every model file."""

    # Side of the square crop that the network sees.
    crop_size: int = setting(CROP_SIZE, "--crop-size", low=8, high=256)
    # Top edge of the crop this many eye distances above the eye line (the paper: 0.6).
    top_margin: float = setting(0.6, "top_margin", low=0.0, high=2.0)
    # Detector upsampling levels tried in turn until a face is found; small pre-cropped
    # faces (CK+48 is 48x48) are only found after one upsampling.
    upsample_tries: tuple[int, ...] = (0, 1)
    # dlib's detection score threshold (dlib's own default is 0). On the test photo a mission
    # patch scores up to 0.23 in 300 shifted copies, while real faces scored 0.73 or more
    # there and 0.36 or more on all 981 CK+48 crops (after upsampling).
    min_face_score: float = setting(0.3, "--min-face-score", low=-10.0, high=10.0)
    # How the crop's contrast is equalized before it is downsampled (EQUALIZATIONS). The paper
    # equalizes the histogram; "face" does it as OpenCV's equalizeHist does, but counts only
    # the pixels inside the photo, so that the border filled in where a crop passes the
    # photo's edge (tightly cropped sets such as CK+48) does not shift the face's grey levels.
    equalization: str = setting("face", "--equalization", choices=EQUALIZATIONS)
    # How the crop frames the face (FRAMINGS); top_margin is the paper's framing's.
    framing: str = setting("paper", "--framing", choices=FRAMINGS)

    def __post_init__(self) -> None:
        check_settings(self)
        tries = self.upsample_tries
        if isinstance(tries, (tuple, list)):
            tries = tuple(plain(t) for t in tries)
        if (
            not isinstance(tries, tuple)
            or not tries
            or not all(
                isinstance(t, int) and not isinstance(t, bool) and 0 <= t <= 3 for t in tries
            )
        ):
            raise SettingError(
                f"upsample_tries must be a list of 1 or more levels from 0 to 3, not {tries!r}"
            )
        object.__setattr__(self, "upsample_tries", tries)

    def fingerprint(self) -> str:
        """Identifies the crops these settings produce (with the alignment version). The
        paper's framing is left out, as before framing was a setting, so that the crops and
        models made then keep their fingerprints."""
        settings = self.to_dict()
        if settings["framing"] == "paper":
            del settings["framing"]
        return fingerprint({"align_version": ALIGN_VERSION, **settings})


PREPROCESS_SETTINGS = settings_of(PreprocessConfig)

# Decoded images wait in a worker until the landmarks of a batch of them are found together;
# the batch is cut short once its images hold this many pixels.
BATCH_PIXELS = 1 << 22

# Dataset layouts (fercli.data.datasets reads them): a layout's name and the other names it
# answers to. "fer2013" is a CSV file, read by fercli.data.fer2013 rather than scanned.
LAYOUTS = ("jaffe", "ck+", "folders", "fer2013")
# --adapt: how the per-pixel statistics of the faces being labelled are mapped onto the training
# crops' (fercli.infer.adapt): "mean", "mean+std", or "none" (the global statistics only).
ADAPT_PIXEL_MAPS = ("mean", "mean+std", "none")
LAYOUT_ALIASES = {
    "jaffe": "jaffe",
    "ck+": "ck+",
    "ck": "ck+",
    "ckplus": "ck+",
    "cohn-kanade": "ck+",
    "folders": "folders",
    "class-folders": "folders",
    "classes": "folders",
}


@dataclass(frozen=True)
class ScanConfig:
    """How a dataset folder is read into labelled images."""

    # "jaffe", "ck+", "folders", "fer2013" (or another name of one: LAYOUT_ALIASES), or None
    # to detect it.
    layout: str | None = setting(None, "--layout", kind=str)
    # CK+ tree: how many of the last frames of a labelled sequence carry its label.
    ck_frames: int = setting(3, "--ck-frames", low=1, high=100_000)
    # CK+ tree: also take the first frame of each labelled sequence as neutral.
    ck_neutral_first: bool = setting(False, "--ck-neutral")

    def __post_init__(self) -> None:
        check_settings(self)
        known = (*LAYOUT_ALIASES, "fer2013")
        if self.layout is not None and self.layout.lower() not in known:
            raise SettingError(
                f"layout (--layout) {self.layout!r} is not one of {', '.join(LAYOUTS)}"
            )


MODEL_VARIANTS = (
    "paper",
    "dropout",
    "batchnorm",
    "batchnorm-dropout",
    "wide",
    "vgg",
    "vgg-wide",
)
OPTIMIZERS = ("sgd", "nesterov", "adam")
# z-score statistics: "global" (one mean/std of the training images), "pixel" (one per pixel),
# "per-dataset" (several datasets combined: each dataset's own mean/std from its training
# images, the left-out dataset's from its own images in leave-one-dataset-out; "global" on one);
# "image" (each crop by its own mean and std, so that a photo from another camera needs no
# statistics of its set: infer.model.standardise_each).
NORMALISATIONS = ("global", "pixel", "per-dataset", "image")
# "copies": the training set is enlarged once with transformed copies, the originals kept (the
# paper's wording); "online": every epoch replaces each image by a random transformed copy.
AUGMENTATIONS = ("copies", "online")
CLASS_WEIGHTS = ("none", "balanced", "sqrt")
LR_SCHEDULES = ("constant", "cosine")
BALANCES = ("none", "datasets")

# Seeds feed NumPy's and TensorFlow's generators, which take 0 to 2**32 - 1.
MAX_SEED = 2**32 - 1


# The epochs a network started from another model (--init) trains when --epochs is not given:
# a recipe's 100 (or the general recipe's 40) train a network from scratch. Fine-tuning the
# general model (FER2013, vgg-wide) on 22 CK+48 subjects (195 images, 11 subject folds, seeds 0
# and 1): 10 epochs scored as well as 30 or better (85.6% and 85.1% pooled, against 85.6% and
# 83.6%) in a third of the time, and 100 lost 4.1 points (seed 0: 81.5%); 10 scored 2.0 points
# above a network from scratch on both seeds (docs/accuracy.md, "Fine-tuning on few people").
FINE_TUNE_EPOCHS = 10


@dataclass(frozen=True)
class TrainConfig(JsonConfig):
    """How a network is trained: every training setting, declared once. Each field's
    setting() is its default, command-line option, type, range or choices and help; the
    command line's options of fer train and fer crossval, a sweep grid's keys and the checks
    of a Python call are made from them, so a new setting is a new field here (and the code
    that uses it).

    TrainConfig() is the paper's recipe as written (recipe "paper"), the reference results
    compare with. fer train, fer crossval and fercli.train start from DEFAULT_RECIPE
    ("robust") instead: recipe_config(DEFAULT_RECIPE) is what a plain `fer train` uses.
    """

    # Network shape: "paper" is conv32-pool-conv64-pool-softmax; the rest add to it.
    variant: str = setting(
        "paper",
        "--variant",
        choices=MODEL_VARIANTS,
        help="Network: paper (the paper's), dropout, batchnorm (batch normalisation), "
        "batchnorm-dropout (both), wide (more filters) or vgg (three 3x3 convolutions and a "
        "hidden layer, for tens of thousands of images).",
    )
    # Passes over the (enlarged) training set.
    epochs: int = setting(
        100, "--epochs", low=1, high=100_000, help="Passes over the (enlarged) training set."
    )
    # Minutes of training at most for each network (0: no limit). The epochs are timed as
    # they run and those that would not fit are cut, the learning rate's schedule following
    # the new count (fitting.epochs_in_time): a machine slower than the one a recipe was
    # measured on trains fewer epochs in the same time rather than for hours.
    time_limit: float = setting(
        0.0,
        "--time-limit",
        low=0.0,
        high=100_000.0,
        metavar="MINUTES",
        help="Minutes of training at most for each network: epochs that would not fit are cut, "
        "timed as they run (0: no limit).",
    )
    batch_size: int = setting(16, "--batch-size", low=1, high=65_536, help="Mini-batch size.")
    learning_rate: float = setting(0.001, "--lr", low=0.0, help="Learning rate.")
    momentum: float = setting(0.9, "--momentum", low=0.0, high=1.0, help="SGD momentum, 0 to 1.")
    optimizer: str = setting(
        "sgd",
        "--optimizer",
        choices=OPTIMIZERS,
        help="Optimizer: sgd (with --momentum), nesterov (SGD with Nesterov momentum) or adam.",
    )
    # "constant", or "cosine": the rate falls from --lr towards 0 along half a cosine over the
    # epochs (a budget of few epochs ends on small steps).
    lr_schedule: str = setting(
        "constant",
        "--lr-schedule",
        choices=LR_SCHEDULES,
        help="Learning rate over the epochs: constant, or cosine (from --lr down to 0).",
    )
    # Training images only: augmentation on or off, and how (AUGMENTATIONS).
    augment: bool = setting(True, "--augment", help="Augment the training images.")
    augment_mode: str = setting(
        "copies",
        "--augment-mode",
        choices=AUGMENTATIONS,
        only_with="augment",
        help="copies: the training set enlarged with transformed copies, originals kept; "
        "online: each epoch a new random copy.",
    )
    # "copies": transformed copies of each training image added to the originals; every other
    # copy is mirrored (when flip is on) and each is rotated at random. On JAFFE-sized sets
    # this also multiplies the updates per epoch, which 100 epochs of 14 batches need.
    copies: int = setting(
        5,
        "--copies",
        low=0,
        high=1000,
        only_with="augment",
        help="--augment-mode copies: transformed copies per image.",
    )
    # Horizontal flips among the transforms.
    flip: bool = setting(
        True, "--flip", only_with="augment", help="Mirror images among the augmentations."
    )
    # Rotations of up to this many degrees (the paper: "small"; JAFFE lost 4 points at 10).
    max_rotation: float = setting(
        3.0,
        "--max-rotation",
        low=0.0,
        high=180.0,
        only_with="augment",
        help="Largest augmentation rotation, in degrees.",
    )
    # Random shifts of up to this many pixels (0: none, the paper).
    max_shift: float = setting(
        0.0,
        "--max-shift",
        low=0.0,
        high=float(CROP_SIZE),
        only_with="augment",
        help="Largest augmentation shift, in pixels.",
    )
    # Random scaling about the crop's centre by up to 1 +/- this (0: none, the paper): the
    # crop box of another detector or camera distance (0.15: 0.87 to 1.15). Scaling a crop by
    # more than half would leave too little face (or too much border).
    max_scale: float = setting(
        0.0,
        "--max-scale",
        low=0.0,
        high=0.5,
        only_with="augment",
        help="Largest augmentation scaling about the crop's centre, 1 +/- this, at most 0.5.",
    )
    # Photometric augmentation of the training crops (0: none, the paper; 1: full strength):
    # random gamma, contrast, blur and noise, drawn every epoch (augment.PHOTOMETRIC_RANGES).
    photometric: float = setting(
        0.0,
        "--photometric",
        low=0.0,
        high=1.0,
        only_with="augment",
        help="Strength of random gamma, contrast, blur and noise on the training images, 0 to 1.",
    )
    # Label smoothing of the training targets (0: none, the paper): a confident network on one
    # dataset is a confidently wrong one on another. Beyond 0.5, the smoothed target of the
    # true class falls towards the others'.
    label_smoothing: float = setting(
        0.0,
        "--label-smoothing",
        low=0.0,
        high=0.5,
        help="Label smoothing of the training targets, 0 to 0.5.",
    )
    # L2 weight decay (0: none, the paper): X times each convolution's and dense layer's
    # weights added to their gradients at every step (batch normalisation's scales and
    # offsets and the biases are left alone), as SGD's weight decay usually is.
    weight_decay: float = setting(
        0.0,
        "--weight-decay",
        low=0.0,
        high=0.1,
        help="L2 weight decay of the convolution and dense weights, 0 to 0.1 (0: off).",
    )
    # mixup (0: none, the paper): every training image and its target blended with another's,
    # in a proportion drawn from Beta(mixup, mixup) (0.2: mostly one image, a little of the
    # other). Beta(a, a) with a large a mixes every pair half and half: no longer a training
    # image.
    mixup: float = setting(
        0.0,
        "--mixup",
        low=0.0,
        high=4.0,
        only_with="augment",
        help="mixup: blend training images and their targets in pairs, proportions from "
        "Beta(X, X), 0 to 4 (0: off).",
    )
    # z-score statistics from the training images (NORMALISATIONS): one mean/std ("global"),
    # per pixel, one mean/std per dataset of a combination ("per-dataset"), or none but each
    # crop's own ("image").
    normalisation: str = setting(
        "global",
        "--normalisation",
        choices=NORMALISATIONS,
        aliases=("normalization",),
        help="z-score statistics: global (one mean and std), pixel (one per pixel), "
        "per-dataset (several datasets, crossval only: each dataset's own) or image (each "
        "crop by its own: a photo needs no statistics of its set).",
    )
    seed: int = setting(
        0,
        "--seed",
        low=0,
        high=MAX_SEED,
        help="Random seed: same seed, same data -> same folds and weights.",
    )
    # Average the predictions for each face and its mirror image (at test time only).
    test_time_flip: bool = setting(
        False, "--flip-tta", help="Average each face's prediction with its mirror image."
    )
    # Classes to keep (empty: all classes in the dataset).
    classes: tuple[str, ...] = setting(
        (), "--classes", help="Classes to keep, comma-separated, e.g. anger,fear,sadness."
    )
    # The preset these settings started from (RECIPES); reports name it and what differs.
    recipe: str = setting(
        "paper",
        "--recipe",
        help="Starting settings: auto (the default: general from 5,000 images, robust below), "
        "robust (batch normalisation and dropout, mirrored test faces, the crop jittered in "
        "scale and position, for photos from other cameras), general (robust for tens of "
        "thousands of photos: online augmentation, larger batches, fewer epochs, class weights, "
        "the epoch chosen on held-out images, 36 minutes at most), best (robust without the "
        "jitter) or paper (the paper's recipe as written). Options given here override the "
        "recipe's.",
    )
    # Loss weights per class (CLASS_WEIGHTS): "none", "balanced" (each class weighs as much
    # as the others in all: n / (k n_class)) or "sqrt" (half way, 1 / sqrt(n_class), scaled to
    # a mean of 1): FER2013's disgust is 1.5% of its images.
    class_weight: str = setting(
        "none",
        "--class-weight",
        choices=CLASS_WEIGHTS,
        help="Loss weights per class: none, balanced (rare classes weigh as much as common "
        "ones in all) or sqrt (half way).",
    )
    # Images held out of training to choose the epoch to keep: a share of the training images
    # ("0.1", stratified by class, drawn with the seed), a preprocessed dataset (its name or
    # folder) or "" for none (the last epoch is kept). Every epoch is scored on them and the
    # network of the best epoch is the one saved.
    validation: str = setting(
        "",
        "--validation",
        metavar="SHARE|DATASET",
        help="Hold out a share of the training images (0.1) or score on another preprocessed "
        "dataset after every epoch, and keep the epoch that scores best on them.",
    )
    # Several datasets combined (fer train a/ b/): "datasets" draws each dataset's images
    # equally often in every epoch, so that a small one is not drowned by a large one; "none"
    # draws every image once.
    balance: str = setting(
        "none",
        "--balance",
        choices=BALANCES,
        help="Several datasets: none (every image once an epoch) or datasets (each dataset "
        "drawn as often as the others).",
    )
    # A fercli model file whose weights the network starts from (fine-tuning); "" for none.
    # Trained on other people (another dataset), it lends a small set what it learned there.
    init_model: str = setting(
        "",
        "--init",
        metavar="MODEL",
        help="Start from this model's weights (a model trained on other people, e.g. another "
        f"dataset) and fine-tune: {FINE_TUNE_EPOCHS} epochs unless --epochs is given.",
    )

    def __post_init__(self) -> None:
        check_settings(self)
        check_switches(self)
        share = validation_share(self.validation)
        if share is not None and not 0 < share <= MAX_VALIDATION_SHARE:
            raise SettingError(
                f"validation (--validation) {self.validation}: a share of the training images "
                f"above 0 and at most {MAX_VALIDATION_SHARE:g}, or a dataset"
            )

    @classmethod
    def from_dict(cls, data: dict):
        """Settings from JSON (a model file, a report). A setting stored beside its switch
        turned off (a model trained with `--no-augment --mixup 0.4` before such a pair was
        refused) was not applied, and is read as its default."""
        data = dict(data)
        for name, rule in settings_of(cls).items():
            if rule.only_with and data.get(rule.only_with) is False:
                data.pop(name, None)
        return super().from_dict(data)


# Beyond this, too little is left to train on.
MAX_VALIDATION_SHARE = 0.5


def validation_share(validation: str) -> float | None:
    """The share of the training images --validation holds out, None when it names a dataset
    (or nothing)."""
    try:
        return float(validation)
    except ValueError:
        return None


# Every training setting: what the command line, a sweep grid and the Python API accept.
TRAIN_SETTINGS = settings_of(TrainConfig)
