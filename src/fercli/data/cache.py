"""The on-disk store of aligned crops, keyed by file content and preprocessing settings.

One small JSON file per source image: the crop (base64) and what alignment found, or the
reason no face was found, so that a second run over the same folder does no detection work
at all. Settings live in the folder name, so a changed setting simply misses the cache.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fercli.core.config import PreprocessConfig
from fercli.core.hashing import SOURCE_DIGEST_BYTES
from fercli.core.store import atomic_write_bytes, atomic_write_json, crops_dir, make_dir
from fercli.faces.pipeline import FIND_VERSION


@dataclass(frozen=True)
class CacheEntry:
    """What alignment made of one image: a crop, or the reason there is none."""

    crop: np.ndarray | None
    reason: str | None = None
    faces: int = 0  # faces detected (the largest was used)
    box: tuple[int, int, int, int] | None = None
    angle: float = 0.0
    padding: float = 0.0  # share of the crop outside the photo, filled in
    # The image is itself a face crop, aligned from its own landmarks (faces.face_crops).
    whole_image: bool = False
    # False: the face check turned that face down, and it was aligned on the word of
    # --face-crops; reason then says why it is no face without it (as_checked).
    face_check: bool = True
    # The image file's source digest (core.hashing.source_digest), for the dataset to keep;
    # not stored in the cache, whose key it begins (source_of_key).
    source: bytes | None = None

    def as_checked(self) -> CacheEntry:
        """The entry as it is without --face-crops: a face the face check turned down is none."""
        return self if self.face_check else CacheEntry(crop=None, reason=self.reason)

    def to_json(self) -> dict:
        if self.crop is None:
            # Remembered with the version of the face search that found nothing: a later
            # version may find a face (CropCache.get).
            return {"reason": self.reason, "find": FIND_VERSION}
        unchecked = {} if self.face_check else {"face_check": False, "reason": self.reason}
        return {
            **unchecked,
            "whole_image": self.whole_image,
            "crop": base64.b64encode(self.crop.tobytes()).decode(),
            "shape": list(self.crop.shape),
            "faces": self.faces,
            "box": list(self.box) if self.box else None,
            "angle": self.angle,
            "padding": self.padding,
        }

    @classmethod
    def from_json(cls, data: dict) -> CacheEntry:
        if "crop" not in data:
            return cls(crop=None, reason=str(data["reason"]))
        shape = tuple(data["shape"])
        crop = np.frombuffer(base64.b64decode(data["crop"]), dtype=np.uint8).reshape(shape)
        box = tuple(data["box"]) if data.get("box") else None
        return cls(
            crop=crop,
            faces=int(data["faces"]),
            box=box,
            angle=float(data["angle"]),
            padding=float(data.get("padding", 0.0)),
            whole_image=bool(data.get("whole_image", False)),
            face_check=bool(data.get("face_check", True)),
            reason=data.get("reason"),
        )


def content_key(data: bytes) -> str:
    """The cache key of a file: the SHA-256 of its bytes."""
    return hashlib.sha256(data).hexdigest()


def source_of_key(key: str) -> bytes:
    """The source digest of the file a content key was made of (core.hashing.source_digest,
    without hashing the file twice)."""
    return bytes.fromhex(key[: 2 * SOURCE_DIGEST_BYTES])


class CropCache:
    """Aligned crops for one set of preprocessing settings."""

    def __init__(self, config: PreprocessConfig, root: Path | None = None) -> None:
        self.config = config
        self.folder = (root or crops_dir()) / config.fingerprint()

    def prepare(self) -> None:
        """Create the cache folder and record its settings; StoreError if it cannot be written."""
        make_dir(self.folder)
        settings = self.folder / "settings.json"
        if not settings.exists():
            atomic_write_json(settings, self.config.to_dict())

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.json"

    def get(self, key: str) -> CacheEntry | None:
        """The cached result for a content key, or None (also for an unreadable entry)."""
        try:
            data = json.loads(self._path(key).read_bytes())
            entry = CacheEntry.from_json(data)
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if entry.crop is None and data.get("find") != FIND_VERSION:
            return None  # no face, by an older search: try again
        # A damaged entry can still parse; a crop of the wrong size would break the dataset.
        size = self.config.crop_size
        if entry.crop is not None and entry.crop.shape != (size, size):
            return None
        return entry

    def put(self, key: str, entry: CacheEntry) -> None:
        """Store a result atomically; StoreError if the cache cannot be written."""
        atomic_write_bytes(self._path(key), json.dumps(entry.to_json()).encode())
