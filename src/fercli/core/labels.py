"""The expression classes: their names, the order reports and models use, and every spelling
of them met in public datasets."""

from __future__ import annotations

from fercli.core.recipes import GENERAL_FROM_IMAGES

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


# One class taking more than this share of the answers, where the data does not hold as many
# of it, is the collapse a model meets on photos unlike its training set's.
COLLAPSE_SHARE = 0.5
# Fewer answers than this say too little to call a collapse.
COLLAPSE_MIN_ANSWERS = 10


def answer_shares(answers: list[str]) -> dict[str, float]:
    """Each label's share of the answers, largest first (ties in report order)."""
    if not answers:
        return {}
    counts: dict[str, int] = {}
    for answer in answers:
        counts[answer] = counts.get(answer, 0) + 1
    order = label_order(list(counts))
    ranked = sorted(order, key=lambda label: (-counts[label], order.index(label)))
    return {label: counts[label] / len(answers) for label in ranked}


def collapse_note(
    shares: dict[str, float],
    answers: int,
    truth: dict[str, float] | None = None,
    *,
    adapted: bool = False,
    jittered: bool = False,
    varied: bool = False,
    unit: str = "answers",
    same_people: bool = False,
) -> str | None:
    """A warning when one class takes more than COLLAPSE_SHARE of the answers (and, where the
    true classes are known, more than its share of the truth allows); None otherwise. Its
    advice knows what was done: adapted (--adapt was given), jittered (the model was trained
    with the crop jittered, as the robust recipe does: for_photos_from_elsewhere), varied (it
    was trained on a dataset of photos from anywhere: trained_on_varied_data). unit: what
    the answers are; same_people: they are a few people's, seen again and again (a video's
    frames), who may well show one expression throughout."""
    if answers < COLLAPSE_MIN_ANSWERS or not shares:
        return None
    label, share = next(iter(shares.items()))
    if share <= COLLAPSE_SHARE or (truth is not None and truth.get(label, 0.0) > COLLAPSE_SHARE):
        return None
    held = f" (it is {truth.get(label, 0.0):.0%} of the true labels)" if truth is not None else ""
    unless = f"unless its people show {label} throughout, " if same_people else ""
    return (
        f"{label} takes {share:.0%} of the {answers} {unit}{held}: {unless}the model has "
        "collapsed onto one class, as models do on photos unlike their training set's; "
        f"{collapse_advice(adapted, jittered, varied)}"
    )


# What is left to try once --adapt and the robust recipe were: data from many people, cameras
# and crops, which no statistic of one dataset stands in for.
VARIED_DATA = (
    "a model trained on more varied data (many people, cameras and crops, such as FER2013: "
    "fer preprocess fer2013.csv, then fer train)"
)


def trained_on_varied_data(meta: dict) -> bool:
    """Whether a model file's meta says it was trained on GENERAL_FROM_IMAGES images or more
    (the size the recipe general is chosen for: photos from anywhere, such as FER2013); False
    where it does not say."""
    dataset = meta.get("dataset")
    images = dataset.get("images") if isinstance(dataset, dict) else None
    return isinstance(images, int) and images >= GENERAL_FROM_IMAGES


# What is left to try for a model already trained on such data: a few labelled photos like
# the ones it fails on, to fine-tune it with.
FINE_TUNING = (
    "fine-tuning it on some labelled photos like these (fer preprocess them, then fer train "
    "--init MODEL)"
)


def collapse_advice(adapted: bool, jittered: bool, varied: bool = False) -> str:
    """The next steps that can still help a model that collapsed, leaving out what was done:
    --adapt (adapted), the recipe for photos from elsewhere (jittered), and more varied data
    (varied: it was trained on such data, so fine-tuning on photos like these is left)."""
    last = FINE_TUNING if varied else VARIED_DATA
    if adapted and jittered:
        trained = (
            "on photos from anywhere" if varied else "with the recipe for photos from elsewhere"
        )
        return (
            f"--adapt was given and the model was trained {trained} "
            f"(with robust's crop jitter), so what is left to try is {last}"
        )
    steps = [] if adapted else ["try --adapt"]
    if not jittered:
        steps.append(
            "a model trained with the recipe for photos from elsewhere (--recipe robust, fer "
            "train's default)"
        )
    steps.append(last)
    done = "--adapt was given; " if adapted else ""
    first, *rest = steps
    if adapted:
        first = f"try {first}"
    return done + ", or ".join([first, *rest])


def describe_shares(shares: dict[str, float]) -> str:
    """ "surprise 83%, happiness 9%, ..." """
    return ", ".join(f"{label} {share:.0%}" for label, share in shares.items())


def no_neutral_note(classes: list[str]) -> str | None:
    """What to say of a model without a neutral class (one trained on CK+48's seven emotions):
    every face gets one of its emotions, a calm face too. None when it has one."""
    if any(canonical_label(name) == "neutral" for name in classes):
        return None
    return (
        "the model has no neutral class, so it gives every face one of its emotions "
        f"({', '.join(classes)}), a calm face too"
    )
