"""What a long-running library call tells its caller as it goes: one event type for every
command. The library never prints; the caller's callback (the CLI's progress bars, or
nothing) decides what to show. (minGPT's trainer keeps printing in the caller the same way.)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Event:
    """One step of a long run. Which fields matter depends on kind:

    - "items": done items of total so far (images aligned or labelled, frames of a video
      read, FER2013 rows); total is None where it is not known yet (a CSV being streamed).
    - "epoch": network `fold` (a fold, or a member of an ensemble; 0-based) finished
      `epoch` of `epochs`, with its training loss and accuracy.
    - "fold": fold `fold` (0-based) of `folds` finished; accuracy None when it diverged.
      In a sweep, done and total count its folds, and recipe and seed say which one.
    - "start": a training (folds: its networks) or a cross-validation starts, with its
      folds of epochs each, and config, the TrainConfig it trains with; a sweep starts, with
      done folds of total already stored.
    - "where": a cross-validation's folds are done and where.png's maps are being made
      (seconds: a Ctrl-C now leaves them out and keeps the rest).
    """

    kind: str
    done: int = 0
    total: int | None = None
    fold: int = 0
    folds: int = 0
    epoch: int = 0
    epochs: int = 0
    loss: float = math.nan
    accuracy: float | None = None
    recipe: str = ""
    seed: int = 0
    # The caller's name for a unit of work (a crossval fold, a sweep member and fold).
    key: object = None
    # "start" of a training or cross-validation: the TrainConfig it trains with.
    config: object = None
    # "epoch": the accuracy on the images held out to choose the epoch (--validation).
    validation_accuracy: float | None = None


Progress = Callable[[Event], None]


def items(done: int, total: int | None) -> Event:
    """The event of done items of total."""
    return Event("items", done=done, total=total)
