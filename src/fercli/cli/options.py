"""The options several commands share: dataset, model, training options (one signature for
train and crossval), video options, and the progress reporters."""

from __future__ import annotations

import inspect
import math
import time
from pathlib import Path

import typer
import typer.core
import typer.rich_utils

from fercli.cli.app import choices, err, shown

# Options shared by train and crossval: one definition each, so they cannot drift apart.
DatasetArgument = typer.Argument(
    None,
    metavar="DATASET...",
    help="Preprocessed datasets: each a name or folder under FER_HOME, or the original folder "
    "(default: the most recently preprocessed). Several are combined into one selection.",
)
SharedClassesOption = typer.Option(
    False, "--shared-classes", help="Several datasets: keep the classes every one of them has."
)
# Options other commands share word for word: predict, live and evaluate take --model, predict
# and evaluate --adapt-pixels.
ModelOption = typer.Option(None, help="Model file (default: the most recently trained).")
FaceCropsOption = typer.Option(
    False,
    "--face-crops",
    help="Every image is a face crop (FER2013's 48x48 images): one whose face the face check "
    "turns down (a hand over it, the head on one side) is aligned from its own landmarks all "
    "the same, not skipped as no face.",
)
AdaptPixelsOption = typer.Option(
    None,
    "--adapt-pixels",
    help="With --adapt: how the faces' per-pixel statistics are mapped onto the training "
    "crops': mean (the default), mean+std, or none (the global statistics only, as "
    "before fercli kept per-pixel statistics).",
)
RayOption = typer.Option(
    None,
    "--ray",
    metavar="ADDRESS",
    help="Train the folds on the Ray cluster at HOST:PORT, "
    "or auto (the one this machine belongs to); needs pip install 'fercli[ray]'.",
)


# The training options of train and crossval are made from the training settings themselves
# (fercli.core.config.TrainConfig: each field's option, type, choices and help), so a new
# setting needs nothing here. They default to None: unset, the recipe (--recipe, default
# "robust") decides. Their values are checked by TrainConfig, not by the parser (choices
# aside, which the parser lists), so that the command line, grids and the API refuse the same
# values with the same message.


def _shown_default(name: str, plain, paper) -> str:
    """What a plain `fer train` uses for a setting, and the paper recipe's value where it
    differs: " (default: 0.15; --recipe paper: 0)"; nothing for a setting that is empty
    unless given (--init)."""
    from fercli.core.settings import shown_value

    def word(value) -> str:
        if isinstance(value, bool):
            return "on" if value else "off"
        if value == ():
            return "all"
        return shown_value(value)

    default, reference = word(getattr(plain, name)), word(getattr(paper, name))
    if not default:
        return ""
    other = f"; --recipe paper: {reference}" if reference != default else ""
    return f" (default: {default}{other})"


def _with_default(text: str, default: str) -> str:
    """A help text with " (default: ...)" before its final full stop."""
    if text.endswith("."):
        return f"{text[:-1]}{default}."
    return text + default


def _training_option(name: str, rule, plain, paper) -> inspect.Parameter:
    """The command-line option of one training setting, as a parameter of the commands."""
    declaration = rule.option
    if rule.kind is bool:
        declaration = f"{rule.option}/--no-{rule.option.removeprefix('--')}"
    annotation = {bool: bool, int: int, float: float}.get(rule.kind, str)
    if rule.choices:
        annotation = choices(name.title().replace("_", ""), rule.choices)
    return inspect.Parameter(
        name,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        default=typer.Option(
            None,
            declaration,
            help=_with_default(rule.help, _shown_default(name, plain, paper)),
            metavar=rule.metavar,
        ),
        annotation=annotation | None,
    )


def _training_parameters() -> list[inspect.Parameter]:
    """The parameters train and crossval share: --recipe, then one option per training
    setting in TrainConfig's order (--shared-classes after --classes)."""
    from fercli.core.config import TRAIN_SETTINGS
    from fercli.core.recipes import DEFAULT_RECIPE, RECIPE_NAMES, recipe_config

    plain, paper = recipe_config(DEFAULT_RECIPE), recipe_config("paper")
    recipe = choices("Recipe", RECIPE_NAMES)
    parameters = [
        inspect.Parameter(
            "recipe",
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            default=typer.Option(recipe(DEFAULT_RECIPE), help=TRAIN_SETTINGS["recipe"].help),
            annotation=recipe,
        )
    ]
    for name, rule in TRAIN_SETTINGS.items():
        if name == "recipe":
            continue
        parameters.append(_training_option(name, rule, plain, paper))
        if name == "classes":
            parameters.append(
                inspect.Parameter(
                    "shared_classes",
                    inspect.Parameter.POSITIONAL_OR_KEYWORD,
                    default=SharedClassesOption,
                    annotation=bool,
                )
            )
    return parameters


TRAINING_PARAMETERS = _training_parameters()

# Where a command takes the shared training options: `training: dict = TRAINING`.
TRAINING = None


def with_training_options(command):
    """A command with the shared training options (TRAINING_PARAMETERS) in place of its
    `training` parameter; the command receives them as one dict, `training`, keyed by
    TrainConfig's field names (and "recipe", "shared_classes")."""
    import functools

    shared = TRAINING_PARAMETERS
    own = list(inspect.signature(command, eval_str=True).parameters.values())
    clash = {parameter.name for parameter in own} & {parameter.name for parameter in shared}
    if clash:
        raise TypeError(f"{command.__name__}: parameters named as training settings: {clash}")
    place = [parameter.name for parameter in own].index("training")
    parameters = own[:place] + shared + own[place + 1 :]

    @functools.wraps(command)
    def wrapper(**values):
        training = {parameter.name: values.pop(parameter.name) for parameter in shared}
        return command(training=training, **values)

    wrapper.__signature__ = inspect.signature(command).replace(parameters=parameters)
    wrapper.__annotations__ = {parameter.name: parameter.annotation for parameter in parameters}
    return wrapper


def training_settings(options: dict) -> tuple[str, dict]:
    """The recipe and the training settings given on the command line (options: the
    `training` dict of with_training_options; options not given are left out), checked as
    TrainConfig checks them (fercli.core.config), as they are for grids and the API, before
    any work. The recipe "auto" is resolved by the library once it knows the dataset."""
    from fercli.core.config import TRAIN_SETTINGS
    from fercli.core.recipes import recipe_config

    given = {}
    for name, rule in TRAIN_SETTINGS.items():
        value = getattr(options.get(name), "value", options.get(name))  # an Enum's choice
        if rule.kind is tuple and value is not None:  # a list on the command line: a,b,c
            value = tuple(item.strip() for item in value.split(",") if item.strip())
        if value is not None:
            given[name] = value
    recipe = given.pop("recipe")
    recipe_config(recipe, **given)  # SettingError now, not after the data is read
    return recipe, given


def recipe_summary(training: dict) -> str:
    """ "recipe robust" and every setting that differs from it, as the command line writes
    them ("recipe robust with --epochs 2, --no-flip-tta"); recipe values that a setting given
    turned off are named ("(so not the recipe's --max-scale 0.15, --max-shift 3)")."""
    from fercli.core.config import TRAIN_SETTINGS, TrainConfig
    from fercli.core.errors import FerError
    from fercli.core.recipes import recipe_differences, recipe_dropped

    try:
        config = TrainConfig.from_dict(training)
    except (FerError, TypeError, ValueError, AttributeError) as error:
        # A model file written by an older fercli ("epochs": "1"): the rest of its report stands.
        return f"settings not readable ({error})"

    def spelled(values: dict) -> str:
        return ", ".join(TRAIN_SETTINGS[key].command_line(value) for key, value in values.items())

    differences, dropped = recipe_differences(config), recipe_dropped(config)
    text = f"recipe {training.get('recipe', 'paper')}"
    if differences:
        text += f" with {spelled(differences)}"
    if dropped:
        text += f" (so not the recipe's {spelled(dropped)})"
    return text


def header(bar, text: str) -> None:
    """A line above the progress bar, shown where the bar is (on a terminal)."""
    if not bar.disable:
        err.print(shown(text))


def epoch_reporter(bar, task, folds: int = 1, epochs: int | None = None, header: str | None = None):
    """Turn training events into the progress display. With epochs (per fold), a finished
    fold completes its share of the bar even where no epoch events come (folds on Ray). A
    "start" event (a training's or a crossval's) gives both, and shows header, its "{folds}"
    and "{recipe}" (the settings trained with, recipe_summary) filled in. A "where" event
    (a crossval's folds done, where.png being made) says so on the bar."""
    finished: list[float] = []
    seen: dict[int, int] = {}
    plan = {"folds": folds, "epochs": epochs}

    def update(event) -> None:
        folds, epochs = plan["folds"], plan["epochs"]
        if event.kind == "start":
            plan.update(folds=event.folds, epochs=event.epochs)
            bar.update(task, total=event.folds * event.epochs)
            if header and not bar.disable:
                recipe = recipe_summary(event.config.to_dict()) if event.config else ""
                err.print(shown(header.format(folds=event.folds, recipe=recipe)))
        elif event.kind == "epoch":
            if epochs and seen.get(event.fold) == -1:
                return  # a late event of a fold already counted in full
            if epochs and event.epochs != epochs:  # --time-limit's plan, cut or grown back
                plan.update(epochs=event.epochs)
                bar.update(task, total=folds * event.epochs)
            seen[event.fold] = seen.get(event.fold, 0) + 1
            bar.advance(task)
            where = f"fold {event.fold + 1}/{folds} " if folds > 1 else ""
            done = f", finished folds {sum(finished) / len(finished):.1%}" if finished else ""
            bar.update(
                task,
                description=f"{where}epoch {event.epoch}/{event.epochs} {figures(event)}{done}",
            )
        elif event.kind == "fold" and event.accuracy is not None:  # None: it diverged
            finished.append(event.accuracy)
            if epochs:
                bar.advance(task, max(0, epochs - seen.get(event.fold, 0)))
                seen[event.fold] = -1
        elif event.kind == "where":
            bar.update(task, description="where.png: explaining test faces")

    return update


def figures(event) -> str:
    """An epoch's figures for the progress line."""
    if not math.isfinite(event.loss):
        return "diverged (loss not finite)"
    text = f"loss {event.loss:.3f} train acc {event.accuracy:.1%}"
    if event.validation_accuracy is not None:
        text += f" validation acc {event.validation_accuracy:.1%}"
    return text


def video_options(every: int, fps: float | None, detect_every: int, smooth: float):
    """predict's video settings (VideoConfig checks them: NaN, infinity, out of range)."""
    from fercli.api import VideoConfig

    return VideoConfig(every=every, fps=fps, detect_every=detect_every, smooth=smooth)


def video_progress(bar):
    """video_progress(bar)(path): a progress callback for one video, a line of bar (which
    shows only on a terminal) with frames done, of how many, and frames read a second."""

    def start(path: str):
        for task in bar.tasks:
            bar.update(task.id, visible=False)
        task = bar.add_task(f"{shown(Path(path).name)}", total=None)
        started = time.perf_counter()

        def update(event) -> None:
            elapsed = time.perf_counter() - started
            rate = f" ({event.done / elapsed:.0f} frames/s)" if elapsed > 0 else ""
            bar.update(
                task,
                completed=event.done,
                total=event.total,
                description=f"{shown(Path(path).name)}{rate}",
            )

        return update

    return start
