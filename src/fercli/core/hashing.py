"""Content hashes: of each crop and of each image file (to recognise the same image again),
and of a set of labelled crops (to recognise the same data again, wherever it is stored).
NumPy only."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

# SHA-256 digests cut to this many bytes: 80 KB for 10,000 crops in a model file, and a chance
# of about n / 2**64 that two different crops are taken for one.
CROP_DIGEST_BYTES = 8
# An image file's digest is cut alike: the first bytes of the SHA-256 of the file's bytes, which
# the crop cache's key (data.cache.content_key, its hex) begins with.
SOURCE_DIGEST_BYTES = 8


def crop_digests(crops: np.ndarray, length: int = CROP_DIGEST_BYTES) -> np.ndarray:
    """The first `length` bytes of each crop's SHA-256, in order and with repeats:
    (n, length) uint8."""
    digests = [
        hashlib.sha256(np.ascontiguousarray(crop).tobytes()).digest()[:length] for crop in crops
    ]
    return digest_rows(digests, length)


def source_digest(data: bytes) -> bytes:
    """An image file's source digest: the first SOURCE_DIGEST_BYTES of the SHA-256 of its
    bytes. It recognises a training photo whose face predict crops differently."""
    return hashlib.sha256(data).digest()[:SOURCE_DIGEST_BYTES]


def digest_rows(digests: Sequence[bytes], length: int = SOURCE_DIGEST_BYTES) -> np.ndarray:
    """Digests of `length` bytes as the rows of an (n, length) uint8 array, in order."""
    if any(len(digest) != length for digest in digests):
        raise ValueError(f"digests must be {length} bytes long")
    return np.frombuffer(b"".join(digests), np.uint8).reshape(-1, length)


def data_fingerprint(crops: np.ndarray, labels: Sequence[str]) -> str:
    """Identifies labelled crops (their pixels and, image by image, their label names): the same
    for the same data however it was selected or stored."""
    digest = hashlib.sha256(np.ascontiguousarray(crops).tobytes())
    digest.update("\n".join(map(str, labels)).encode("utf-8", "surrogateescape"))
    return digest.hexdigest()[:16]
