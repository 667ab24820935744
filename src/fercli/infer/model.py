"""The model file and FerModel, which fer predict runs without TensorFlow.

A trained network is exported layer by layer into a pickle-free .npz: the weights as plain
arrays, and a JSON description of the layers with everything predict needs (class names,
z-score statistics, preprocessing and training settings, versions, a data fingerprint).
`load_model` reads it with numpy alone and runs the forward pass in numpy, so loading a
model never executes code from the file and `fer predict` never pays for importing
TensorFlow.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

# Re-exported: where a model file's format and limits are told.
from fercli.core.archives import MAX_MODEL_BYTES as MAX_MODEL_BYTES
from fercli.core.archives import (
    MODEL_FORMAT,
    MODEL_FORMAT_VERSION,
    PER_IMAGE_FORMAT_VERSION,
    model_file_problem,
    model_meta_problem,
    read_model_archive,
)
from fercli.core.archives import READABLE_FORMAT_VERSIONS as READABLE_FORMAT_VERSIONS
from fercli.core.config import ALIGN_VERSION, PreprocessConfig, TrainConfig
from fercli.core.errors import ModelError, NoModelError
from fercli.core.hashing import SOURCE_DIGEST_BYTES, crop_digests
from fercli.core.store import atomic_write, default_model, models_dir, pack_json
from fercli.infer.inputs import (
    PixelMap,
    PixelStatistics,
    checked_pixel_statistics,
    network_input,
)

# Re-exported: learn (training, augment) takes it from the model module.
from fercli.infer.inputs import standardise_each as standardise_each
from fercli.infer.runtime import NumpyNetwork, one_blas_thread

# Re-exported: where the training data a model file keeps was told before.
from fercli.infer.training_data import TRAINING_HASH_BYTES as TRAINING_HASH_BYTES
from fercli.infer.training_data import crop_hashes as crop_hashes
from fercli.infer.training_data import digest_array, training_arrays

# An ensemble averages a few networks (a crossval's folds); more would only cost predict time.
MAX_ENSEMBLE_MEMBERS = 50


@dataclass
class Member:
    """One network of a model file with its own z-score statistics."""

    network: NumpyNetwork
    mean: np.ndarray
    std: np.ndarray
    per_image: bool = False  # standardise_each before the statistics
    pixel_map: PixelMap | None = None  # --adapt: the grey levels mapped first

    def predict_proba(self, crops: np.ndarray, flip: bool) -> np.ndarray:
        x = network_input(crops, self.mean, self.std, self.per_image, self.pixel_map)
        if not flip:
            return self.network(x)
        # The faces and their mirror images in one pass.
        both = self.network(np.concatenate([x, x[:, :, ::-1]]))
        return (both[: len(x)] + both[len(x) :]) / 2


@dataclass
class ExportedNetwork:
    """A trained network as a model file stores it: layer specs, weights, z-score statistics."""

    specs: list[dict]
    weights: dict[str, np.ndarray]
    mean: np.ndarray
    std: np.ndarray
    per_image: bool = False  # standardise_each before the statistics


@dataclass
class FerModel:
    """A trained classifier: aligned crops in, class probabilities out (an ensemble's: the
    mean of its members' probabilities)."""

    network: NumpyNetwork
    classes: list[str]
    mean: np.ndarray  # z-score statistics of the training crops (scalar or per pixel)
    std: np.ndarray
    preprocess: PreprocessConfig
    meta: dict
    path: Path | None = None
    # crop_hashes of the training crops; None for a model file written before fercli kept them.
    training_hashes: np.ndarray | None = None
    # The sorted, distinct source digests (core.hashing.source_digest) of the image files the
    # training crops came from; None for a file written before fercli kept them, or a model
    # trained on images that came from no file of their own (FER2013's CSV).
    training_sources: np.ndarray | None = None
    # Every network of the file, the first being network/mean/std; empty means just that one.
    members: list[Member] = field(default_factory=list)
    # The training crops' per-pixel statistics; None for a file written before fercli kept them.
    pixel_statistics: PixelStatistics | None = None
    # --adapt: the crops being labelled mapped onto pixel_statistics first (each member's too).
    pixel_map: PixelMap | None = None

    @property
    def per_image(self) -> bool:
        """Whether each crop is standardised by its own mean and std first."""
        return bool(self.meta.get("per_image_standardisation"))

    @property
    def networks(self) -> list[Member]:
        return self.members or [
            Member(self.network, self.mean, self.std, self.per_image, self.pixel_map)
        ]

    @cached_property
    def _training_digests(self) -> frozenset[bytes]:
        return frozenset(row.tobytes() for row in self.training_hashes)

    def seen_in_training(self, crops: np.ndarray) -> list[bool] | None:
        """For each uint8 crop (n, s, s), whether the model was trained on exactly these
        pixels; None when the model file does not say."""
        if self.training_hashes is None:
            return None
        return [
            row.tobytes() in self._training_digests
            for row in crop_digests(crops, TRAINING_HASH_BYTES)
        ]

    @cached_property
    def _source_digests(self) -> frozenset[bytes]:
        return frozenset(row.tobytes() for row in self.training_sources)

    def seen_source(self, digest: bytes) -> bool | None:
        """Whether the model was trained on (the largest face of) the image file of this
        source digest (core.hashing.source_digest); None when the model file does not say."""
        if self.training_sources is None:
            return None
        return digest in self._source_digests

    def normalise(self, crops: np.ndarray) -> np.ndarray:
        """uint8 crops (n, s, s) -> z-scored network input (n, s, s, 1)."""
        return network_input(crops, self.mean, self.std, self.per_image, self.pixel_map)

    def predict(self, image):
        """The expression of every face in an image (a path, or a BGR or grayscale uint8
        array): a list of FacePrediction (box, label, probabilities). See fercli.api."""
        from fercli.infer.label import label_faces

        return label_faces(image, self)

    def explain(self, image, every_class: bool = False):
        """Where the network looks, for every face in an image (a path, or a BGR or grayscale
        uint8 array): a list of FaceExplanation (box, label, probability, and map: a (32, 32)
        float array of how much covering each pixel of the aligned crop lowers the label's
        probability); every_class: also each class's map (maps). See fercli.infer.explain."""
        from fercli.infer.explain import explain_faces

        return explain_faces(image, self, every_class)

    def predict_proba(self, crops: np.ndarray, threads: int = 1) -> np.ndarray:
        """Class probabilities (n, classes) for uint8 crops (n, s, s).

        threads: the networks of an ensemble run on up to this many threads at once (numpy's
        matrix products let go of the GIL). Their probabilities are summed in the same order
        either way, so the result is the same to the last bit. Worth it for large batches
        only (--explain's occluded copies): a thread costs more than a few faces' pass.
        """
        if len(crops) == 0:
            return np.zeros((0, len(self.classes)))
        flip = bool(self.meta.get("test_time_flip"))
        members = self.networks
        if threads > 1 and len(members) > 1:
            each = _on_threads(lambda member: member.predict_proba(crops, flip), members, threads)
        else:
            each = (member.predict_proba(crops, flip) for member in members)
        with np.errstate(all="ignore"):
            probabilities = next(each)
            for member_probabilities in each:
                probabilities = probabilities + member_probabilities
        return probabilities / len(members) if len(members) > 1 else probabilities


def _on_threads(function, members: list[Member], threads: int) -> Iterator[np.ndarray]:
    """function(member) for each member, on up to `threads` threads, in the members' order.
    Each network already runs on one BLAS thread; held so here too, so that no thread's
    leaving that setting restores more threads while another still computes."""
    from concurrent.futures import ThreadPoolExecutor

    def run(member: Member) -> np.ndarray:
        with np.errstate(all="ignore"):  # numpy's error state is each thread's own
            return function(member)

    with one_blas_thread(), ThreadPoolExecutor(min(threads, len(members))) as pool:
        return iter(list(pool.map(run, members)))


def save_networks(
    path: Path,
    networks: list[ExportedNetwork],
    classes: list[str],
    preprocess: PreprocessConfig,
    training: TrainConfig,
    extra: dict | None = None,
    keep_existing: bool = False,
    training_crops: np.ndarray | None = None,
    check=None,
    training_sources: np.ndarray | None = None,
) -> Path:
    """save_model for exported networks: one, or several that predict averages (an ensemble).
    The arguments are save_model's; returns the path written. training_crops: the crops the
    networks were trained on (their hashes and pixel statistics are kept); training_sources:
    the source digests of their image files, (n, SOURCE_DIGEST_BYTES) uint8 (kept sorted and
    distinct, with training_crops), None where they are not all known."""
    if not 1 <= len(networks) <= MAX_ENSEMBLE_MEMBERS:
        raise ModelError(
            f"a model file holds 1 to {MAX_ENSEMBLE_MEMBERS} networks, not {len(networks)}"
        )
    first, others = networks[0], networks[1:]
    if len({network.per_image for network in networks}) > 1:
        raise ModelError("the networks of one model file must all standardise crops alike")
    member_weights, members = _member_arrays(others)
    weights = {**first.weights, **member_weights}
    meta = {
        "format": MODEL_FORMAT,
        "format_version": PER_IMAGE_FORMAT_VERSION if first.per_image else MODEL_FORMAT_VERSION,
        "classes": list(classes),
        "layers": first.specs,
        "members": members,
        "input_size": preprocess.crop_size,
        "preprocess": preprocess.to_dict(),
        "preprocess_fingerprint": preprocess.fingerprint(),
        "align_version": ALIGN_VERSION,
        "training": training.to_dict(),
        "versions": library_versions(),
        **(extra or {}),
    }
    if first.per_image:
        meta["per_image_standardisation"] = True
    kept = {}
    if training_crops is not None:
        kept, meta["pixel_statistics"] = training_arrays(training_crops, training_sources)
    arrays = {
        "meta": pack_json(meta),
        "norm_mean": np.asarray(first.mean, np.float64),
        "norm_std": np.asarray(first.std, np.float64),
        **weights,
        **kept,
    }
    return atomic_write(Path(path), lambda stream: np.savez(stream, **arrays), keep_existing, check)


def _member_arrays(others: list[ExportedNetwork]) -> tuple[dict[str, np.ndarray], list[dict]]:
    """The arrays and meta entries of an ensemble's networks beyond the first: each one's
    weights and normalisation under its own prefix ("member1_", ...), and its layers naming
    them."""
    weights: dict[str, np.ndarray] = {}
    members = []
    for number, network in enumerate(others, start=1):
        prefix = f"member{number}_"
        specs = [
            {**spec, "weights": [prefix + key for key in spec["weights"]]} for spec in network.specs
        ]
        weights.update({prefix + key: value for key, value in network.weights.items()})
        weights[prefix + "norm_mean"] = np.asarray(network.mean, np.float64)
        weights[prefix + "norm_std"] = np.asarray(network.std, np.float64)
        members.append(
            {"layers": specs, "norm_mean": prefix + "norm_mean", "norm_std": prefix + "norm_std"}
        )
    return weights, members


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape a model's numbers."""
    import importlib.metadata

    from fercli.core.version import VERSION as __version__

    versions = {"fercli": __version__}
    for package in (
        "tensorflow",
        "tensorflow-cpu",
        "keras",
        "numpy",
        "opencv-python-headless",
        "dlib-bin",
    ):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def load_model(path: str | Path | None = None) -> FerModel:
    """Read a model file written by `fer train` (None: the most recently trained one in
    FER_HOME/models), without TensorFlow and without unpickling.

    ModelError with the reason for a missing, damaged, foreign or incompatible file;
    NoModelError when path is None and no model has been trained.
    """
    path = newest_model() if path is None else Path(path)
    meta, arrays = _read_model_file(path)
    try:
        preprocess = _checked_preprocess(meta, path)
        model = _assemble_model(meta, arrays, preprocess, path)
        # One forward pass proves the layers and weights fit together before any photo is read;
        # on varied images, since weights that overflow can give finite numbers on a blank one.
        if model.members:
            probe = _check_members(model)
        else:
            probe = model.predict_proba(probe_crops(preprocess.crop_size))
    except ModelError as error:
        # The runtime's refusals (a layer type it does not know) cannot name the file.
        message = str(error)
        raise ModelError(
            message if message.startswith(f"{path}:") else f"{path}: {message}"
        ) from None
    except Exception as error:
        raise ModelError(f"{path}: damaged model file ({type(error).__name__}: {error})") from None
    if probe.shape != (len(probe_crops(preprocess.crop_size)), len(model.classes)):
        raise ModelError(
            f"{path}: damaged model file (its output does not match its {len(model.classes)} "
            "classes)"
        )
    if not np.all(np.isfinite(probe)):
        raise ModelError(f"{path}: damaged model file (its probabilities are not finite numbers)")
    return model


def newest_model() -> Path:
    """The model file trained most recently in FER_HOME/models that can be read as one (a
    damaged, oversized or foreign file is passed over, as fer list does): the model used when
    none is named. NoModelError when there is none; ModelError when there are only files that
    cannot be read."""
    path = default_model()
    if path is not None:
        return path
    try:
        unreadable = sorted(
            candidate
            for candidate in models_dir().glob("*.npz")
            if not candidate.name.startswith(".")
        )
    except OSError:
        unreadable = []
    if unreadable:
        first = unreadable[0]
        raise ModelError(
            f"no readable model in {models_dir()}: {len(unreadable)} file"
            f"{'' if len(unreadable) == 1 else 's'} there cannot be read ({first.name}: "
            f"{model_file_problem(first)}); train a model or give a model file's path"
        )
    raise NoModelError(
        f"no trained model in {models_dir()}: train one (fer train, or fercli.train in "
        "Python) or give a model file's path"
    )


def is_model_file(path: Path) -> bool:
    """Whether a file is a fercli model file (its header: an .npz whose meta says so, within
    the limits of core.archives), read without unpickling and without its weights; False for
    anything else or unreadable."""
    return model_file_problem(Path(path)) is None


def _read_model_file(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """A model file's meta and arrays, read without unpickling (core.archives); ModelError for
    a missing, oversized, unreadable or foreign file, a format version this fercli cannot
    read, or a meta of the wrong shape: refused once, here, so that no command meets an entry
    of the wrong type later."""
    meta, arrays = read_model_archive(path)
    problem = model_meta_problem(meta)
    if problem:
        raise ModelError(f"{path}: {problem}")
    return meta, arrays


def _checked_preprocess(meta: dict, path: Path) -> PreprocessConfig:
    """The model's preprocessing settings, once this fercli is known to make the same crops
    (same alignment version, same settings fingerprint); ModelError saying what differs."""
    preprocess = PreprocessConfig.from_dict(meta["preprocess"])
    if meta.get("align_version") != ALIGN_VERSION:
        raise ModelError(
            f"{path}: the model was trained on crops from alignment version "
            f"{meta.get('align_version')}, "
            f"this fercli aligns with version {ALIGN_VERSION}: retrain it with `fer train`"
        )
    if meta["preprocess_fingerprint"] != preprocess.fingerprint():
        saved = meta["preprocess"]
        current = preprocess.to_dict()
        differing = sorted(
            set(saved) ^ set(current)
            | {k for k in saved if k in current and saved[k] != current[k]}
        )
        raise ModelError(
            f"{path}: the model's preprocessing settings "
            f"({', '.join(differing) or 'their fingerprint'}) "
            "differ from what this fercli can reproduce: retrain it with `fer train`"
        )
    return preprocess


def _assemble_model(meta: dict, arrays: dict, preprocess: PreprocessConfig, path: Path) -> FerModel:
    """The FerModel of a file's meta and arrays, its classes, weights and statistics checked
    (names, finite numbers, positive standard deviations); ModelError if damaged."""
    weights = {key: arrays[key] for spec in meta["layers"] for key in spec["weights"]}
    described = _member_descriptions(meta, preprocess.crop_size)
    statistics = [("norm_mean", arrays["norm_mean"]), ("norm_std", arrays["norm_std"])]
    for member in described:
        weights.update({key: arrays[key] for spec in member["layers"] for key in spec["weights"]})
        statistics += [(member[key], arrays[member[key]]) for key in ("norm_mean", "norm_std")]
    classes = meta["classes"]
    if not isinstance(classes, list) or not all(isinstance(name, str) and name for name in classes):
        raise ModelError("damaged model file (its classes are not a list of names)")
    if len(set(classes)) != len(classes):
        raise ModelError("damaged model file (a class name appears twice)")
    for key, value in [*statistics, *weights.items()]:
        if value.dtype.kind not in "fiu" or not np.all(np.isfinite(value)):
            raise ModelError(f"damaged model file ({key} holds values that are not finite numbers)")
    for key, value in statistics:
        if key.endswith("norm_std") and not np.all(value > 0):
            raise ModelError(f"damaged model file ({key} is not positive)")
    network = NumpyNetwork(meta["layers"], weights)
    model = FerModel(
        network=network,
        classes=list(classes),
        mean=arrays["norm_mean"],
        std=arrays["norm_std"],
        preprocess=preprocess,
        meta=meta,
        path=path,
        training_hashes=digest_array(
            "training_hashes", arrays.get("training_hashes"), TRAINING_HASH_BYTES
        ),
        training_sources=digest_array(
            "training_sources", arrays.get("training_sources"), SOURCE_DIGEST_BYTES
        ),
        pixel_statistics=checked_pixel_statistics(meta, arrays, preprocess.crop_size),
    )
    if described:
        model.members = [Member(network, model.mean, model.std, model.per_image)] + [
            Member(
                NumpyNetwork(member["layers"], weights),
                arrays[member["norm_mean"]].astype(np.float64),
                arrays[member["norm_std"]].astype(np.float64),
                model.per_image,
            )
            for member in described
        ]
    return model


def _member_descriptions(meta: dict, size: int) -> list[dict]:
    """The networks of an ensemble file beyond the first (meta "members"), checked for shape:
    ModelError naming the member that does not fit."""
    members = meta.get("members", [])
    if meta.get("format_version") == 1 and members:
        raise ModelError("damaged model file (a version 1 file holds one network)")
    if not isinstance(members, list) or len(members) + 1 > MAX_ENSEMBLE_MEMBERS:
        raise ModelError(
            f"damaged model file (members is not a list of at most {MAX_ENSEMBLE_MEMBERS - 1} "
            "networks)"
        )
    for number, member in enumerate(members, start=2):
        if not (
            isinstance(member, dict)
            and isinstance(member.get("layers"), list)
            and isinstance(member.get("norm_mean"), str)
            and isinstance(member.get("norm_std"), str)
            and all(
                isinstance(spec, dict) and isinstance(spec.get("weights"), list)
                for spec in member["layers"]
            )
        ):
            raise ModelError(
                f"damaged model file (ensemble member {number} of {len(members) + 1} is not "
                "described by layers, norm_mean and norm_std)"
            )
    return members


def _check_members(model: FerModel) -> np.ndarray:
    """Every member of an ensemble must take the file's crops and give its classes: ModelError
    naming the first one that does not (mismatched members, say from another dataset).
    Returns the model's probabilities on probe_crops (each member run once)."""
    crops = probe_crops(model.preprocess.crop_size)
    count = len(model.members)
    flip = bool(model.meta.get("test_time_flip"))
    outputs = []
    for number, member in enumerate(model.members, start=1):
        if (
            member.mean.ndim not in (0, 2)
            or (member.mean.ndim == 2 and member.mean.shape != crops.shape[1:])
            or member.std.shape != member.mean.shape
        ):
            raise ModelError(
                f"ensemble member {number} of {count} has z-score statistics of shape "
                f"{member.mean.shape}/{member.std.shape}, not those of "
                f"{crops.shape[1]}x{crops.shape[2]} crops"
            )
        try:
            with np.errstate(all="ignore"):
                output = member.predict_proba(crops, flip)
        except ModelError:
            raise
        except Exception as error:
            raise ModelError(
                f"ensemble member {number} of {count} does not fit "
                f"{crops.shape[1]}x{crops.shape[2]} "
                f"crops ({type(error).__name__}: {error})"
            ) from None
        if output.shape != (len(crops), len(model.classes)):
            raise ModelError(
                f"ensemble member {number} of {count} gives "
                f"{output.shape[-1] if output.ndim == 2 else '?'} "
                f"probabilities, and the file has {len(model.classes)} classes (mismatched members)"
            )
        outputs.append(output)
    return np.mean(outputs, axis=0)


def probe_crops(size: int) -> np.ndarray:
    """A few uint8 crops that exercise a network: black, white, mid-grey, gradients, noise."""
    ramp = np.linspace(0, 255, size).astype(np.uint8)
    noise = np.random.default_rng(0).integers(0, 256, (2, size, size), dtype=np.uint8)
    return np.stack(
        [
            np.zeros((size, size), np.uint8),
            np.full((size, size), 255, np.uint8),
            np.full((size, size), 128, np.uint8),
            np.tile(ramp, (size, 1)),
            np.tile(ramp[:, None], (1, size)),
            *noise,
        ]
    )
