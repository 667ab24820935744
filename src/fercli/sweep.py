"""Sweeps: every recipe of a grid cross-validated with several seeds on identical folds,
ranked, and each compared with the base recipe on the same (seed, fold) pairs.

A grid file (TOML):

    seeds = [0, 1, 2]          # each seed: its own folds, the same for every recipe
    folds = 10
    group = "subject"          # or "random"
    classes = []               # optional: the classes to keep (default all)

    [base]                     # the reference recipe: TrainConfig settings
    epochs = 100

    [vary]                     # every combination is a recipe
    variant = ["paper", "batchnorm"]
    flip_tta = [false, true]

Every finished fold is stored at once (atomically) under the sweep's folder, whose name is
derived from the data and the grid: running the same sweep again computes only the folds
that are missing.
"""

from __future__ import annotations

import contextlib
import csv
import io
import itertools
import math
import time
import types
import typing
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np

from fercli.config import (
    MODEL_VARIANTS,
    NORMALISATIONS,
    OPTIMIZERS,
    TrainConfig,
    fingerprint,
    recipe_config,
)
from fercli.errors import FerError, GridError, TrainingError
from fercli.events import Event, Progress
from fercli.prepared import PreparedDataset
from fercli.store import (
    atomic_write,
    atomic_write_json,
    atomic_write_text,
    make_dir,
    runs_dir,
    slug,
)

# Spellings of the command line (and of habit) for TrainConfig's field names.
ALIASES = {"lr": "learning_rate", "flip_tta": "test_time_flip", "normalization": "normalisation"}
# Settings whose values must be one of a list (others are only type-checked).
CHOICES = {"variant": MODEL_VARIANTS, "optimizer": OPTIMIZERS, "normalisation": NORMALISATIONS}
# Settings that belong to the sweep as a whole, not to a recipe.
TOP_LEVEL = ("seeds", "folds", "group", "classes")
METHOD = (
    "paired differences over the same (seed, fold) pairs; 95% interval from the corrected "
    "resampled t-test for repeated k-fold cross-validation (Nadeau & Bengio 2003): the variance "
    "of the differences times (1/(k*r) + n_test/n_train), t with k*r-1 degrees of freedom"
)


@dataclass(frozen=True)
class Grid:
    """A sweep's plan: a base recipe, what varies, seeds, folds and grouping."""

    base: dict
    vary: dict  # setting -> tuple of values
    seeds: tuple[int, ...] = (0, 1, 2)
    folds: int = 10
    group: str = "random"
    classes: tuple[str, ...] = ()
    source: str = "grid"

    def to_json(self) -> dict:
        return {
            "base": _jsonable(self.base),
            "vary": {key: [_jsonable(v) for v in values] for key, values in self.vary.items()},
            "seeds": list(self.seeds),
            "folds": self.folds,
            "group": self.group,
            "classes": list(self.classes),
        }


def _jsonable(value):
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    return list(value) if isinstance(value, tuple) else value


def _setting_types() -> dict:
    return typing.get_type_hints(TrainConfig)


def _type_name(hint) -> str:
    return getattr(hint, "__name__", None) or str(hint)


# The plain types a setting can have: how to tell a value of it, and its name in an error.
SCALARS = {
    bool: (lambda value: isinstance(value, bool), "true or false"),
    int: (lambda value: isinstance(value, int) and not isinstance(value, bool), "a whole number"),
    float: (
        lambda value: isinstance(value, (int, float)) and not isinstance(value, bool),
        "a number",
    ),
    str: (lambda value: isinstance(value, str), "a string"),
}


def _coerce(value, hint, where: str):
    """value as the type hint of a TrainConfig field says, or GridError naming where."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(value, hint, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise GridError(f"{where}: {value!r} is not a list")
        item = (typing.get_args(hint) or (str,))[0]
        return tuple(_coerce(element, item, where) for element in value)
    if hint in SCALARS:
        accepts, name = SCALARS[hint]
        if not accepts(value):
            raise GridError(f"{where}: {value!r} is not {name}")
        return float(value) if hint is float else value
    if isinstance(hint, type) and not isinstance(value, hint):
        raise GridError(f"{where}: {value!r} is not a {_type_name(hint)}")
    return value


def _coerce_union(value, hint, where: str):
    """value as the first type of a union (X | None) it fits."""
    options = typing.get_args(hint)
    if value is None and type(None) in options:
        return None
    for option in options:
        if option is type(None):
            continue
        try:
            return _coerce(value, option, where)
        except GridError:
            continue
    raise GridError(f"{where}: {value!r} is not a {_type_name(hint)}")


def setting_name(key: str, source: str) -> str:
    """TrainConfig's name for a setting key of a grid file (CLI spellings accepted)."""
    name = key.strip().replace("-", "_")
    name = ALIASES.get(name, name)
    known = [item.name for item in fields(TrainConfig)]
    if name not in known:
        raise GridError(f"{source}: unknown setting {key!r}; settings are {', '.join(known)}")
    if name == "seed":
        raise GridError(
            f"{source}: {key!r} is not a recipe setting: list the seeds in seeds = [...]"
        )
    return name


def _setting(key: str, value, source: str, table: str) -> tuple[str, object]:
    name = setting_name(key, f"{source} [{table}]")
    where = f"{source}: [{table}] {key}"
    coerced = _coerce(value, _setting_types()[name], where)
    allowed = CHOICES.get(name)
    if allowed and coerced not in allowed:
        raise GridError(f"{where}: {coerced!r} is not one of {', '.join(allowed)}")
    return name, coerced


def parse_grid(data: dict, source: str = "grid") -> Grid:
    """A Grid from the contents of a grid file; GridError naming the file and the key."""
    unknown = sorted(set(data) - {"base", "vary", *TOP_LEVEL})
    if unknown:
        raise GridError(
            f"{source}: unknown key {unknown[0]!r}; a grid has [base], [vary], "
            f"{', '.join(TOP_LEVEL)} (settings go in [base] or [vary])"
        )
    for table in ("base", "vary"):
        if not isinstance(data.get(table, {}), dict):
            raise GridError(f"{source}: {table} must be a table ([{table}])")
    base = dict(_setting(key, value, source, "base") for key, value in data.get("base", {}).items())
    vary = _vary(data.get("vary", {}), source)
    seeds = data.get("seeds", [0, 1, 2])
    if not isinstance(seeds, list) or not seeds:
        raise GridError(
            f"{source}: seeds must be a non-empty list of whole numbers, e.g. seeds = [0, 1, 2]"
        )
    seeds = tuple(dict.fromkeys(_coerce(seed, int, f"{source}: seeds") for seed in seeds))
    folds = _coerce(data.get("folds", 10), int, f"{source}: folds")
    if folds < 2:
        raise GridError(f"{source}: folds = {folds}: at least 2")
    group = _coerce(data.get("group", "random"), str, f"{source}: group")
    if group not in ("random", "subject"):
        raise GridError(f"{source}: group {group!r} is not one of random, subject")
    classes = _coerce(
        data.get("classes", list(base.pop("classes", ()))), tuple[str, ...], f"{source}: classes"
    )
    return Grid(
        base=base, vary=vary, seeds=seeds, folds=folds, group=group, classes=classes, source=source
    )


def _vary(table: dict, source: str) -> dict:
    """The [vary] table: each setting's values, checked, without repeats."""
    vary: dict = {}
    for key, values in table.items():
        if not isinstance(values, list):
            raise GridError(
                f"{source}: [vary] {key} must be a list of values, e.g. {key} = [{values!r}]"
            )
        if not values:
            raise GridError(f"{source}: [vary] {key} is an empty list: nothing to try")
        coerced = [_setting(key, value, source, "vary")[1] for value in values]
        name = setting_name(key, f"{source} [vary]")
        if name == "classes":
            raise GridError(
                f"{source}: [vary] classes: recipes are compared on the same classes; "
                "run a sweep per class set"
            )
        if name in vary:
            raise GridError(f"{source}: [vary] {key} names {name} a second time")
        vary[name] = tuple(dict.fromkeys(coerced))
    if not vary:
        raise GridError(
            f"{source}: [vary] names no setting to vary: a sweep needs something to compare"
        )
    return vary


def _toml():
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    return tomllib


def read_grid(path: Path, overrides: list[str] = ()) -> Grid:
    """Read a grid file and apply command-line overrides ("key=value" with a TOML value:
    a setting of [base], a top-level key such as seeds=[0], or vary.key=[...])."""
    tomllib = _toml()
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise GridError(f"{path}: cannot read the grid file ({error.strerror or error})") from None
    except UnicodeDecodeError:
        raise GridError(f"{path}: not a text file") from None
    except tomllib.TOMLDecodeError as error:
        raise GridError(f"{path}: not valid TOML ({error})") from None
    for item in overrides:
        key, equals, text = item.partition("=")
        key = key.strip()
        if not equals or not key:
            raise GridError(f"--set {item!r}: write key=value, e.g. --set epochs=20")
        try:
            value = tomllib.loads(f"value = {text}")["value"]
        except tomllib.TOMLDecodeError:
            value = text.strip()  # a bare word: a string
        table, dot, name = key.partition(".")
        if dot and table in ("base", "vary"):
            data.setdefault(table, {})[name] = value
        elif key in TOP_LEVEL:
            data[key] = value
        else:
            data.setdefault("base", {})[key] = value
    return parse_grid(data, str(path))


@dataclass(frozen=True)
class Recipe:
    """One combination of the grid: its settings that differ from the base."""

    changes: dict
    config: TrainConfig  # seed 0; each member replaces it

    @property
    def name(self) -> str:
        return describe_changes(self.changes)


def describe_changes(changes: dict) -> str:
    def text(value) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, tuple):
            return ",".join(map(str, value))
        return str(value)

    return " ".join(f"{key}={text(value)}" for key, value in changes.items()) or "base"


def recipes(grid: Grid) -> list[Recipe]:
    """The base first, then every combination of the varied values that is not the base."""

    def config_of(settings: dict) -> TrainConfig:
        # A recipe setting names a preset (config.RECIPES) that the other settings override.
        try:
            return recipe_config(
                settings.get("recipe", "paper"),
                **{key: value for key, value in settings.items() if key != "recipe"},
            )
        except (TypeError, FerError) as error:
            raise GridError(f"{grid.source}: {error}") from None

    common = {**grid.base, "classes": grid.classes, "seed": 0}
    base_config = config_of(common)
    reference = base_config.to_dict()
    found = [Recipe({}, base_config)]
    seen = {fingerprint(reference)}
    names = list(grid.vary)
    for values in itertools.product(*(grid.vary[name] for name in names)):
        config = config_of({**common, **dict(zip(names, values, strict=True))})
        settings = config.to_dict()
        key = fingerprint(settings)
        if key in seen:
            continue
        seen.add(key)
        changes = {
            name: getattr(config, name) for name in names if settings[name] != reference[name]
        }
        found.append(Recipe(changes, config))
    return found


# --- statistics ---------------------------------------------------------------------------


def corrected_interval(
    values: np.ndarray, test_train_ratio: float, confidence: float = 0.95
) -> dict:
    """Mean of per-(seed, fold) values with the corrected resampled t interval (Nadeau &
    Bengio 2003) for r repetitions of k-fold CV: n = k*r values, variance s^2 (ddof 1) times
    (1/n + n_test/n_train), t with n-1 degrees of freedom."""
    from scipy import stats

    values = np.asarray(values, dtype=np.float64).ravel()
    count = len(values)
    mean = float(values.mean())
    if count < 2:
        return {"mean": mean, "low": math.nan, "high": math.nan, "p": math.nan, "df": 0}
    variance = float(values.var(ddof=1)) * (1 / count + test_train_ratio)
    quantile = float(stats.t.ppf(0.5 + confidence / 2, count - 1))
    if variance == 0:
        return {
            "mean": mean,
            "low": mean,
            "high": mean,
            "p": 1.0 if mean == 0 else 0.0,
            "df": count - 1,
        }
    half = quantile * math.sqrt(variance)
    t_value = mean / math.sqrt(variance)
    return {
        "mean": mean,
        "low": mean - half,
        "high": mean + half,
        "p": float(2 * stats.t.sf(abs(t_value), count - 1)),
        "df": count - 1,
    }


# --- running ------------------------------------------------------------------------------


@dataclass
class RecipeResult:
    rank: int
    name: str
    changes: dict
    accuracy: float  # mean over seeds of the mean fold accuracy
    accuracy_interval: tuple[float, float]
    spread: float  # standard deviation (ddof 1) of the per-seed mean accuracies
    seed_means: list[float]
    macro_f1: float  # mean over seeds
    difference: float  # mean paired difference to the base
    difference_interval: tuple[float, float]
    p_value: float
    seconds: float  # training time of all its folds (summed over workers)
    fold_accuracies: dict  # seed -> list of fold accuracies
    reports: dict  # seed -> folder of the member crossval's report

    @property
    def is_base(self) -> bool:
        return not self.changes


@dataclass
class SweepReport:
    folder: Path
    grid: Grid
    dataset: dict
    engine: dict
    recipes: list[RecipeResult]
    planned_folds: int
    stored_folds: int  # found done at the start
    trained_folds: int  # trained in this run
    seconds: float
    interrupted: bool = False
    files: dict = field(default_factory=dict)
    test_train_ratio: float = math.nan

    def to_json(self) -> dict:
        def number(value):
            return None if isinstance(value, float) and math.isnan(value) else value

        return {
            "folder": str(self.folder),
            "grid": self.grid.to_json(),
            "dataset": self.dataset,
            "engine": self.engine,
            "method": METHOD,
            "spread_note": "standard deviation (ddof=1) of the per-seed mean fold accuracies",
            "test_train_ratio": number(self.test_train_ratio),
            "recipes": [
                {
                    "rank": item.rank,
                    "recipe": item.name,
                    "changes": _jsonable(item.changes),
                    "accuracy": item.accuracy,
                    "accuracy_interval": [number(v) for v in item.accuracy_interval],
                    "spread": number(item.spread),
                    "seed_means": item.seed_means,
                    "macro_f1": item.macro_f1,
                    "difference_to_base": item.difference,
                    "difference_interval": [number(v) for v in item.difference_interval],
                    "p_value": number(item.p_value),
                    "seconds": round(item.seconds, 2),
                    "fold_accuracies": {
                        str(seed): values for seed, values in item.fold_accuracies.items()
                    },
                    "reports": {str(seed): str(path) for seed, path in item.reports.items()},
                }
                for item in self.recipes
            ],
            "planned_folds": self.planned_folds,
            "stored_folds": self.stored_folds,
            "trained_folds": self.trained_folds,
            "seconds": round(self.seconds, 2),
            "interrupted": self.interrupted,
        }


def sweep_folder(dataset: PreparedDataset, data_fingerprint: str, grid: Grid) -> Path:
    """The folder of a sweep: the same data and grid always give the same folder."""
    from fercli import __version__

    identity = fingerprint(
        {"data": data_fingerprint, "grid": grid.to_json(), "fercli": __version__}
    )
    return runs_dir() / f"sweep-{slug(dataset.name)}-{identity[:12]}"


def _member_name(recipe_index: int, seed: int) -> str:
    return f"recipe{recipe_index + 1}-seed{seed}"


def _fold_file(folder: Path, member: str, fold: int) -> Path:
    return folder / "folds" / member / f"fold{fold + 1:02d}.npz"


def _load_fold(path: Path, test_index: np.ndarray) -> dict | None:
    """A stored fold result, or None if there is none or it is for other test images."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            if not np.array_equal(archive["test_index"], test_index):
                return None
            return {"probabilities": archive["probabilities"], "seconds": float(archive["seconds"])}
    except (OSError, KeyError, ValueError, EOFError):
        return None


def _store_fold(path: Path, result: dict, test_index: np.ndarray) -> None:
    arrays = {
        "probabilities": np.asarray(result["probabilities"]),
        "test_index": test_index,
        "seconds": np.float64(result["seconds"]),
    }
    atomic_write(path, lambda stream: np.savez(stream, **arrays))


def run_sweep(
    dataset: PreparedDataset, grid: Grid, engine=None, progress: Progress | None = None
) -> SweepReport:
    """Cross-validate every recipe of grid with every seed, resuming from stored folds.

    engine: fercli.engines engine (default: this machine's cores). progress receives a
    "start" event (done: the folds found stored), then a "fold" event (done, total, recipe,
    seed, fold, accuracy) as each fold finishes, and the engine's "epoch" events. Ctrl-C:
    returns with interrupted set and no ranking; the finished folds are stored.
    """
    from fercli.crossvalidation import make_folds
    from fercli.engines import LocalEngine
    from fercli.training import data_fingerprint, select_classes

    started = time.perf_counter()
    engine = engine or LocalEngine()
    selection = select_classes(dataset, grid.classes)
    data_id = data_fingerprint(selection)
    folder = make_dir(sweep_folder(dataset, data_id, grid))
    plan = recipes(grid)
    atomic_write_json(
        folder / "grid.json",
        {
            "grid": grid.to_json(),
            "source": grid.source,
            "recipes": [item.name for item in plan],
            "data_fingerprint": data_id,
        },
    )
    splits = {seed: make_folds(selection, grid.folds, grid.group, seed) for seed in grid.seeds}
    results, tasks = _stored_and_missing(folder, plan, grid.seeds, splits)
    planned = len(results) * grid.folds
    stored_count = planned - len(tasks)
    if progress:
        progress(Event("start", done=stored_count, total=planned))
    trained, interrupted = _train_missing(
        folder, plan, selection, splits, tasks, results, engine, (stored_count, planned), progress
    )
    report = SweepReport(
        folder=folder,
        grid=grid,
        dataset={
            "name": dataset.name,
            "images": len(selection.crops),
            "classes": selection.labels,
            "fingerprint": data_id,
        },
        engine=engine.describe(len(tasks)),
        recipes=[],
        planned_folds=planned,
        stored_folds=stored_count,
        trained_folds=trained,
        seconds=0.0,
        interrupted=interrupted,
    )
    if not interrupted:
        report.recipes, report.test_train_ratio = _rank(
            dataset, selection, plan, grid, splits, results, report
        )
    report.seconds = time.perf_counter() - started
    if not interrupted:
        report.files = save_sweep(report)
    return report


def _stored_and_missing(folder: Path, plan: list, seeds: tuple[int, ...], splits: dict):
    """Each member's (recipe index, seed) folds found stored, and a FoldTask for every fold
    still to train."""
    from fercli.crossvalidation import FoldTask

    members = [(index, seed) for seed in seeds for index in range(len(plan))]
    results: dict[tuple[int, int], dict[int, dict]] = {member: {} for member in members}
    tasks = []
    for recipe_index, seed in members:
        config = replace(plan[recipe_index].config, seed=seed)
        for fold, (train_index, test_index) in enumerate(splits[seed]):
            stored = _load_fold(
                _fold_file(folder, _member_name(recipe_index, seed), fold), test_index
            )
            if stored is not None:
                results[(recipe_index, seed)][fold] = stored
            else:
                tasks.append(FoldTask((recipe_index, seed), config, fold, train_index, test_index))
    return results, tasks


def _train_missing(
    folder: Path,
    plan: list,
    selection,
    splits: dict,
    tasks: list,
    results: dict,
    engine,
    counts: tuple[int, int],
    progress: Progress | None,
) -> tuple[int, bool]:
    """Train the missing folds on the engine, storing each as it finishes; (folds trained,
    whether Ctrl-C stopped it). TrainingError when a fold diverged."""
    done, planned = counts
    trained = 0
    try:
        with contextlib.closing(
            engine.run(selection.crops, selection.targets, len(selection.labels), tasks, progress)
        ) as finished:
            for result in finished:
                recipe_index, seed = result["key"]
                fold = result["fold"]
                test_index = splits[seed][fold][1]
                if result.get("diverged"):
                    # No number to rank: the recipe's training is unusable as it stands.
                    raise TrainingError(
                        f"recipe {plan[recipe_index].name}, seed {seed}, fold {fold + 1}: training "
                        f"diverged ({result['diverged']}); change that recipe (a smaller lr)"
                    )
                _store_fold(
                    _fold_file(folder, _member_name(recipe_index, seed), fold), result, test_index
                )
                results[(recipe_index, seed)][fold] = result
                trained += 1
                if progress:
                    accuracy = float(
                        np.mean(
                            result["probabilities"].argmax(axis=1) == selection.targets[test_index]
                        )
                    )
                    progress(
                        Event(
                            "fold",
                            done=done + trained,
                            total=planned,
                            recipe=plan[recipe_index].name,
                            seed=seed,
                            fold=fold,
                            accuracy=accuracy,
                        )
                    )
    except KeyboardInterrupt:
        return trained, True
    return trained, False


def _rank(
    dataset: PreparedDataset,
    selection,
    plan: list,
    grid: Grid,
    splits: dict,
    results: dict,
    report: SweepReport,
) -> tuple[list[RecipeResult], float]:
    """Every recipe's figures over its seeds (each seed's crossval report saved in its own
    folder), best first, with its paired difference to the base recipe; and the test/train
    size ratio the corrected intervals use."""
    from fercli.crossvalidation import assemble_crossval, save_crossval

    train_sizes = [len(train) for seed in grid.seeds for train, _ in splits[seed]]
    test_sizes = [len(test) for seed in grid.seeds for _, test in splits[seed]]
    ratio = float(np.mean(test_sizes) / np.mean(train_sizes))
    accuracies: dict[int, np.ndarray] = {}
    summaries = []
    for recipe_index, recipe in enumerate(plan):
        per_seed, f1s, reports, seconds = {}, [], {}, 0.0
        for seed in grid.seeds:
            member_results = results[(recipe_index, seed)]
            config = replace(recipe.config, seed=seed)
            member_seconds = sum(float(item["seconds"]) for item in member_results.values())
            crossval = assemble_crossval(
                dataset,
                selection,
                splits[seed],
                config,
                grid.group,
                member_results,
                report.engine,
                member_seconds,
            )
            member_folder = report.folder / _member_name(recipe_index, seed)
            save_crossval(crossval, member_folder)
            per_seed[seed] = [fold.accuracy for fold in crossval.folds]
            f1s.append(crossval.macro_f1)
            reports[seed] = member_folder
            seconds += member_seconds
        accuracies[recipe_index] = np.array([per_seed[seed] for seed in grid.seeds])
        summaries.append((recipe, per_seed, f1s, reports, seconds))
    ranked = []
    for recipe_index, (recipe, per_seed, f1s, reports, seconds) in enumerate(summaries):
        values = accuracies[recipe_index]
        seed_means = values.mean(axis=1)
        own = corrected_interval(values, ratio)
        paired = corrected_interval(values - accuracies[0], ratio)
        ranked.append(
            RecipeResult(
                rank=0,
                name=recipe.name,
                changes=recipe.changes,
                accuracy=float(seed_means.mean()),
                accuracy_interval=(own["low"], own["high"]),
                spread=float(seed_means.std(ddof=1)) if len(seed_means) > 1 else math.nan,
                seed_means=[float(value) for value in seed_means],
                macro_f1=float(np.mean(f1s)),
                difference=paired["mean"],
                difference_interval=(paired["low"], paired["high"]),
                p_value=paired["p"] if recipe_index else math.nan,
                seconds=seconds,
                fold_accuracies=per_seed,
                reports=reports,
            )
        )
    ranked.sort(key=lambda item: (-item.accuracy, item.name))
    for rank, item in enumerate(ranked, start=1):
        item.rank = rank
    return ranked, ratio


def save_sweep(report: SweepReport) -> dict[str, Path]:
    """Write sweep.json, sweep.csv and sweep.png into the sweep's folder."""
    from fercli.pictures import sweep_image

    folder = report.folder
    files = {
        "json": folder / "sweep.json",
        "csv": folder / "sweep.csv",
        "plot": folder / "sweep.png",
    }
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(
        [
            "rank",
            "recipe",
            "accuracy",
            "accuracy_low",
            "accuracy_high",
            "spread_over_seeds",
            "macro_f1",
            "difference_to_base",
            "difference_low",
            "difference_high",
            "p_value",
            "seconds",
        ]
    )
    for item in report.recipes:
        writer.writerow(
            [
                item.rank,
                item.name,
                f"{item.accuracy:.6f}",
                *(f"{v:.6f}" for v in item.accuracy_interval),
                f"{item.spread:.6f}",
                f"{item.macro_f1:.6f}",
                f"{item.difference:.6f}",
                *(f"{v:.6f}" for v in item.difference_interval),
                "" if math.isnan(item.p_value) else f"{item.p_value:.6f}",
                f"{item.seconds:.2f}",
            ]
        )
    atomic_write_text(files["csv"], text.getvalue())
    title = (
        f"{report.dataset['name']}: {len(report.grid.seeds)} seeds x {report.grid.folds} folds "
        f"({report.grid.group}); mean accuracy, 95% corrected interval"
    )
    sweep_image(
        [(item.name, item.accuracy, *item.accuracy_interval) for item in report.recipes],
        files["plot"],
        title,
    )
    payload = report.to_json()
    payload["files"] = {name: str(path) for name, path in files.items()}
    atomic_write_json(files["json"], payload)
    return files
