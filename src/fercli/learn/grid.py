"""A sweep's grid file: TOML read with limits, its settings coerced and checked as every
setting is (fercli.core.config), and the recipes it spells out (fercli.core.recipes)."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path

from fercli.core.config import TRAIN_SETTINGS, TrainConfig, fingerprint
from fercli.core.errors import FerError, GridError, SettingError
from fercli.core.recipes import recipe_config
from fercli.core.settings import Setting, spellings

# Settings that belong to the sweep as a whole, not to a recipe.
TOP_LEVEL = ("seeds", "folds", "group", "classes")
# A grid file larger than this is not one (a grid is a few lines; /dev/zero never ends).
MAX_GRID_BYTES = 1 << 20
# At most this many values of one setting, or seeds, and recipes times seeds in a sweep: each
# pair is a whole cross-validation, so more is a typing slip, and would take minutes to plan.
MAX_VALUES = 1000
MAX_RUNS = 10_000
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
            "base": jsonable(self.base),
            "vary": {key: [jsonable(v) for v in values] for key, values in self.vary.items()},
            "seeds": list(self.seeds),
            "folds": self.folds,
            "group": self.group,
            "classes": list(self.classes),
        }


def jsonable(value):
    if isinstance(value, dict):
        return {key: jsonable(item) for key, item in value.items()}
    return list(value) if isinstance(value, tuple) else value


# The sweep's own keys, checked as settings are (the training settings are TrainConfig's).
FOLDS = Setting("folds", int, low=2, high=100_000)
GROUP = Setting("group", str, choices=("random", "subject"))


def _checked(rule: Setting, name: str, value, where: str):
    """value as the plain value of a setting (Setting.check), or GridError naming where."""
    try:
        return rule.check(name, value)
    except SettingError as error:
        raise GridError(f"{where}: {error}") from None


def setting_name(key: str, source: str) -> str:
    """TrainConfig's name for a setting key of a grid file: the field's name, the option's
    (lr, flip_tta, init, max-shift) or an alias (normalization); see TrainConfig."""
    name = spellings(TrainConfig).get(key.strip().replace("-", "_"))
    if name is None:
        known = ", ".join(TRAIN_SETTINGS)
        raise GridError(f"{source}: unknown setting {key!r}; settings are {known}")
    if name == "seed":
        raise GridError(
            f"{source}: {key!r} is not a recipe setting: list the seeds in seeds = [...]"
        )
    return name


def _setting(key: str, value, source: str, table: str) -> tuple[str, object]:
    name = setting_name(key, f"{source} [{table}]")
    return name, _checked(TRAIN_SETTINGS[name], name, value, f"{source}: [{table}] {key}")


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
    if len(seeds) > MAX_VALUES:
        raise GridError(f"{source}: {len(seeds):,} seeds; at most {MAX_VALUES:,}")
    runs = math.prod(len(values) for values in vary.values()) * len(seeds)
    if runs > MAX_RUNS:
        raise GridError(
            f"{source}: up to {runs:,} cross-validations (recipes times seeds); a sweep runs at "
            f"most {MAX_RUNS:,}: vary fewer settings or values at once"
        )
    seed = TRAIN_SETTINGS["seed"]
    seeds = tuple(dict.fromkeys(_checked(seed, "seed", s, f"{source}: seeds") for s in seeds))
    folds = _checked(FOLDS, "folds", data.get("folds", 10), source)
    group = _checked(GROUP, "group", data.get("group", "random"), source)
    classes = _checked(
        TRAIN_SETTINGS["classes"],
        "classes",
        data.get("classes", list(base.pop("classes", ()))),
        f"{source}: classes",
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
        if len(values) > MAX_VALUES:
            raise GridError(
                f"{source}: [vary] {key}: {len(values):,} values; at most {MAX_VALUES:,}"
            )
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
    import tomllib  # imported when a grid is read: fer --help need not

    return tomllib


def _grid_text(path: Path) -> str:
    """A grid file's text: a regular file (a FIFO would wait for ever, /dev/zero never end) of
    at most MAX_GRID_BYTES, UTF-8 with or without a byte-order mark."""
    if not path.exists():
        raise GridError(f"{path}: no such grid file")
    if not path.is_file():
        raise GridError(f"{path}: not a regular file (a grid is a TOML file)")
    try:
        with open(path, "rb") as stream:
            data = stream.read(MAX_GRID_BYTES + 1)
    except OSError as error:
        raise GridError(f"{path}: cannot read the grid file ({error.strerror or error})") from None
    if len(data) > MAX_GRID_BYTES:
        raise GridError(f"{path}: more than {MAX_GRID_BYTES // 1024} KB: not a grid file")
    try:
        return data.decode("utf-8-sig")  # -sig: an editor's byte-order mark is no error
    except UnicodeDecodeError:
        raise GridError(f"{path}: not a text file") from None


def _parse_toml(text: str, where: str) -> dict:
    tomllib = _toml()
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise GridError(f"{where}: not valid TOML ({error})") from None
    except RecursionError:
        raise GridError(f"{where}: lists or tables nested too deeply for a grid") from None


def read_grid(path: Path, overrides: list[str] = ()) -> Grid:
    """Read a grid file and apply command-line overrides ("key=value" with a TOML value:
    a setting of [base], a top-level key such as seeds=[0], or vary.key=[...])."""
    tomllib = _toml()
    path = Path(path)
    data = _parse_toml(_grid_text(path), str(path))
    for item in overrides:
        key, equals, text = item.partition("=")
        key = key.strip()
        if not equals or not key:
            raise GridError(f"--set {item!r}: write key=value, e.g. --set epochs=20")
        try:
            value = tomllib.loads(f"value = {text}")["value"]
        except tomllib.TOMLDecodeError:
            value = text.strip()  # a bare word: a string
        except RecursionError:
            raise GridError(f"--set {key}: nested too deeply") from None
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


def describe_base(grid: Grid) -> str:
    """What a sweep's base recipe is, as its table names it: the preset it starts from and its
    values of the settings the grid varies ("base (paper: variant=paper test_time_flip=false)")."""
    base = recipes(grid)[0].config
    values = describe_changes({name: getattr(base, name) for name in grid.vary})
    return f"base ({base.recipe}{': ' + values if grid.vary else ''})"


def recipes(grid: Grid) -> list[Recipe]:
    """The base first, then every combination of the varied values that is not the base."""

    def config_of(settings: dict) -> TrainConfig:
        # A recipe setting names a preset (core.recipes.RECIPES) that the other settings override.
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
