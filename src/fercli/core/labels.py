"""The expression classes: their names, the order reports and models use, and every spelling
of them met in public datasets."""

from __future__ import annotations

# The seven classes of the paper, in the order reports and models use; CK+ adds contempt.
BASIC_LABELS = ("anger", "disgust", "fear", "happiness", "sadness", "surprise", "neutral")
KNOWN_LABELS = BASIC_LABELS + ("contempt",)

# Every spelling of a class we have met in public datasets, mapped to our label.
LABEL_ALIASES = {
    "anger": "anger",
    "angry": "anger",
    "an": "anger",
    "disgust": "disgust",
    "disgusted": "disgust",
    "di": "disgust",
    "fear": "fear",
    "fearful": "fear",
    "afraid": "fear",
    "scared": "fear",
    "fe": "fear",
    "happiness": "happiness",
    "happy": "happiness",
    "joy": "happiness",
    "ha": "happiness",
    "sadness": "sadness",
    "sad": "sadness",
    "sa": "sadness",
    "surprise": "surprise",
    "surprised": "surprise",
    "su": "surprise",
    "neutral": "neutral",
    "ne": "neutral",
    "calm": "neutral",
    "contempt": "contempt",
    "contemptuous": "contempt",
}


def canonical_label(name: str) -> str:
    """Our label for a class name from a dataset; unknown names are kept as they are
    (without surrounding spaces, unless the name is nothing but spaces: a label is never empty)."""
    return LABEL_ALIASES.get(name.strip().lower(), name.strip() or name)


def label_order(labels: set[str] | list[str]) -> list[str]:
    """Labels in report order: the paper's seven, then contempt, then the rest sorted."""
    present = set(labels)
    known = [label for label in KNOWN_LABELS if label in present]
    return known + sorted(present - set(known))
