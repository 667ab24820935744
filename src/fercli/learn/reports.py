"""The records of a cross-validation and an evaluation: their scores as report.json has them
(ScoreReport; CrossvalReport, EvaluationReport), and a cross-validation as it ran
(CrossvalRun: settings, data, each fold's outcome with its network, its report), from which
the ensemble model is saved."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fercli.core.config import TrainConfig
from fercli.core.store import DefaultModelChange
from fercli.data.prepared import PreparedDataset
from fercli.learn.folds import FoldOutcome, FoldResult
from fercli.learn.selection import Selection
from fercli.learn.where import WhereMaps


@dataclass
class ScoreReport:
    """Predictions on test images and their scores, as fer crossval and fer evaluate both
    report them (report.json's figures), with the files written for them."""

    dataset: dict
    protocol: dict
    labels: list[str]
    folds: list[FoldResult]
    confusion: np.ndarray
    per_class: dict[str, dict[str, float]]
    macro_f1: float
    pooled_accuracy: float
    warnings: list[str]
    seconds: float
    predictions: list[dict] = field(default_factory=list)
    # The files written for it (report, confusion, predictions, model), once they are.
    files: dict[str, Path] = field(default_factory=dict)
    # where.png's figures, None where no network could draw them.
    where: WhereMaps | None = field(default=None, repr=False)

    @property
    def accuracies(self) -> np.ndarray:
        """The accuracies of the folds whose training did not diverge."""
        return np.array(
            [fold.accuracy for fold in self.folds if fold.diverged is None], dtype=float
        )

    @property
    def diverged_folds(self) -> list[int]:
        return [fold.fold for fold in self.folds if fold.diverged is not None]

    @property
    def mean_accuracy(self) -> float:
        """NaN (null in JSON) without folds, or when a fold diverged: the rest is no protocol's
        result."""
        return float(self.accuracies.mean()) if self.folds and not self.diverged_folds else math.nan

    @property
    def std_accuracy(self) -> float:
        return float(self.accuracies.std()) if self.folds and not self.diverged_folds else math.nan

    def to_json(self) -> dict:
        """The report as standard JSON: figures that do not exist (no fold finished, or one
        diverged) are null."""

        def number(value: float) -> float | None:
            return None if math.isnan(value) else value

        return {
            "dataset": self.dataset,
            "protocol": self.protocol,
            "labels": self.labels,
            "folds": [self._fold_json(fold) for fold in self.folds],
            "mean_accuracy": number(self.mean_accuracy),
            "std_accuracy": number(self.std_accuracy),
            "std_note": "population standard deviation of the fold accuracies (ddof=0)",
            "pooled_accuracy": number(self.pooled_accuracy),
            "macro_f1": number(self.macro_f1),
            "per_class": self.per_class,
            "confusion_matrix": self.confusion.tolist(),
            "confusion_note": "rows: true class, columns: predicted class, summed over folds",
            "warnings": self.warnings,
            "seconds": round(self.seconds, 2),
            **self._completion_json(),
            **({"where": self.where.to_json()} if self.where is not None else {}),
        }

    def _fold_json(self, fold: FoldResult) -> dict:
        return {key: value for key, value in fold.__dict__.items() if key != "per_dataset"}

    def _completion_json(self) -> dict:
        """The JSON fields of how much of the planned work finished (the subclass's)."""
        return {
            "interrupted": False,
            "completed_folds": len(self.folds),
            "planned_folds": len(self.folds),
            "diverged_folds": self.diverged_folds,
        }


@dataclass
class CrossvalReport(ScoreReport):
    """The figures of a cross-validation (report.json), with the protocol it followed."""

    # Ctrl-C stopped the training before every fold had finished.
    interrupted: bool = False
    planned_folds: int = 0
    # Several datasets combined: per dataset, its test images' figures (per_dataset_figures).
    per_dataset: dict[str, dict] = field(default_factory=dict)
    # Not in the JSON: a Ctrl-C that came after every fold had finished (the report and the
    # model were still written; where.png is left out if it came while its maps were made),
    # and why no ensemble model was saved (CrossvalRun.model_refusal), once the files are.
    interrupted_after_folds: bool = False
    no_model: str | None = None
    # The ensemble model saved became the default of fer predict (and which it replaced).
    default_model: DefaultModelChange | None = None

    def _fold_json(self, fold: FoldResult) -> dict:
        # per_dataset only where several datasets were combined: one dataset's report is as it
        # was.
        return {
            key: value
            for key, value in fold.__dict__.items()
            if key != "per_dataset" or self.per_dataset
        }

    def _completion_json(self) -> dict:
        return {
            "interrupted": self.interrupted,
            "completed_folds": len(self.folds),
            "planned_folds": self.planned_folds,
            "diverged_folds": self.diverged_folds,
            **({"per_dataset": self.per_dataset} if self.per_dataset else {}),
        }


@dataclass
class CrossvalRun:
    """A cross-validation as it ran: its settings, the images and classes chosen (once), its
    folds, each finished fold's outcome with its network, and the report of its figures. The
    ensemble model is saved from the run (crossval_files.save_crossval_model)."""

    dataset: PreparedDataset
    config: TrainConfig  # as used: its classes are the selection's
    selection: Selection
    splits: list[tuple[np.ndarray, np.ndarray]]
    outcomes: dict[int, FoldOutcome]  # the finished folds, by 0-based fold number
    report: CrossvalReport
    save_model: bool = True  # the caller's wish (fer crossval --no-save-model: False)

    @property
    def model_refusal(self) -> str | None:
        """Why no ensemble model is to be saved of this run; None when one is."""
        report = self.report
        if not self.save_model:
            return "--no-save-model was given (save_model=False)"
        if len(self.outcomes) < len(self.splits):
            return f"only {len(self.outcomes)} of {len(self.splits)} folds finished"
        if report.diverged_folds:
            return f"training diverged in fold {', '.join(map(str, report.diverged_folds))}"
        if self.config.normalisation == "per-dataset":
            return (
                "--normalisation per-dataset: each network's statistics exist only inside its fold"
            )
        missing = [index + 1 for index, outcome in self.outcomes.items() if outcome.export is None]
        if missing:
            return f"fold {', '.join(map(str, missing))} has no exported network"
        return None

    @property
    def model_worth_saving(self) -> bool:
        return self.model_refusal is None


@dataclass
class EvaluationReport(ScoreReport):
    """A model scored on a dataset: the figures of its one test (folds: that one "fold",
    with the model's training data as its training part), the model (protocol["model"],
    model_protocol) and each predicted class's share of the answers, largest first."""

    answer_shares: dict[str, float] = field(default_factory=dict)
    # The accuracy over every image of the shared classes, those without a face found counted
    # wrong (evaluate.every_image: images, without_face, accuracy; None figures and a note
    # where the dataset does not know). pooled_accuracy is over the faces found.
    all_images: dict = field(default_factory=dict)

    def _completion_json(self) -> dict:
        return {
            **super()._completion_json(),
            **({"answer_shares": self.answer_shares} if self.answer_shares else {}),
            **({"all_images": self.all_images} if self.all_images else {}),
        }
