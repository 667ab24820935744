"""Settings check themselves (fercli.core.config): the command line, a sweep grid and a Python
call refuse the same values with the same message, before any training."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import typer.main
from typer.testing import CliRunner

import fercli
from fercli.cli import app
from fercli.cli.options import recipe_summary
from fercli.core.config import TRAIN_SETTINGS, PreprocessConfig, ScanConfig, TrainConfig
from fercli.core.errors import GridError, SettingError
from fercli.core.recipes import DEFAULT_RECIPE, recipe_config, recipe_differences, recipe_dropped
from fercli.core.settings import settings_of, shown_value
from fercli.infer.model import load_model
from fercli.learn.grid import parse_grid, recipes
from synthetic import make_dataset, save_synthetic

# (TrainConfig field, command-line option, bad value, the message's end)
BAD = [
    ("augment_mode", "--augment-mode", "copy", "'copy' is not one of copies, online"),
    ("learning_rate", "--lr", -1.0, "-1 must be at least 0"),
    ("batch_size", "--batch-size", 0, "0 must be at least 1"),
    ("epochs", "--epochs", 0, "0 must be at least 1"),
    ("copies", "--copies", -1, "-1 must be at least 0"),
    ("max_shift", "--max-shift", -5.0, "-5 must be at least 0"),
    ("seed", "--seed", -1, "-1 must be at least 0"),
    ("seed", "--seed", 99999999999, "99999999999 is more than 4294967295, the largest that"),
    ("learning_rate", "--lr", math.nan, "must be a finite number, not nan"),
    ("max_rotation", "--max-rotation", math.inf, "must be a finite number, not inf"),
    ("variant", "--variant", "huge", "'huge' is not one of paper, dropout"),
    ("max_scale", "--max-scale", 0.7, "0.7 is more than 0.5, the largest that makes sense"),
    ("photometric", "--photometric", -0.5, "-0.5 must be at least 0"),
    ("label_smoothing", "--label-smoothing", 0.9, "0.9 is more than 0.5"),
    ("mixup", "--mixup", math.nan, "must be a finite number, not nan"),
    ("weight_decay", "--weight-decay", -0.001, "-0.001 must be at least 0"),
]


@pytest.mark.parametrize(("field", "option", "value", "ending"), BAD)
def test_a_bad_setting_is_refused_by_the_settings_themselves(field, option, value, ending):
    with pytest.raises(SettingError) as refused:
        TrainConfig(**{field: value})
    message = str(refused.value)
    assert message.startswith(f"{field} ({option}) ")
    assert ending in message


# Choices (--augment-mode, --variant) are refused by the command line's parser itself, which
# lists them (a usage error, exit 2); numbers reach the settings.
@pytest.mark.parametrize(("field", "option", "value", "ending"), BAD[1:8] + BAD[-4:-1])
def test_the_command_line_refuses_with_the_same_message(field, option, value, ending):
    result = CliRunner().invoke(app, ["train", option, str(value)])
    assert result.exit_code == 1, result.output
    with pytest.raises(SettingError) as refused:
        TrainConfig(**{field: value})
    assert f"error: {refused.value}" in " ".join(result.output.split())


@pytest.mark.parametrize(("field", "option", "value", "ending"), BAD[:8] + BAD[-4:-1])
def test_a_grid_refuses_with_the_same_message(field, option, value, ending):
    key = "lr" if field == "learning_rate" else field
    if field == "seed":
        data = {"seeds": [value], "vary": {"epochs": [1, 2]}}
    else:
        data = {"vary": {key: [value]}}
    with pytest.raises(GridError) as refused:
        parse_grid(data, "g.toml")
    with pytest.raises(SettingError) as same:
        TrainConfig(**{field: value})
    assert str(same.value) in str(refused.value)
    assert str(refused.value).startswith("g.toml: ")


def test_the_python_api_refuses_before_any_training():
    dataset = save_synthetic(make_dataset(labels=("anger", "happiness"), subjects=2), "two")
    for settings in ({"augment_mode": "copy"}, {"batch_size": 0}, {"learning_rate": -1.0}):
        with pytest.raises(SettingError):
            fercli.train(dataset.parent.name, **settings)
    with pytest.raises(SettingError, match="epochs"):
        fercli.crossval(dataset.parent.name, folds=2, epochs=0, save_model=False)


def test_every_training_setting_has_one_rule_and_the_defaults_pass():
    from dataclasses import fields

    assert {item.name for item in fields(TrainConfig)} == set(TRAIN_SETTINGS)
    for recipe in ("paper", "best", "robust"):
        recipe_config(recipe)  # the recipes are valid settings
    TrainConfig.from_dict(TrainConfig(seed=7, learning_rate=0.01).to_dict())


def test_preprocessing_settings_check_themselves():
    with pytest.raises(SettingError, match="equalization"):
        PreprocessConfig(equalization="fancy")
    with pytest.raises(SettingError, match="upsample_tries"):
        PreprocessConfig(upsample_tries=())
    with pytest.raises(SettingError, match="finite"):
        PreprocessConfig(min_face_score=math.nan)
    assert PreprocessConfig().fingerprint() == PreprocessConfig().fingerprint()


def test_no_path_is_a_setting_error(tmp_path: Path):
    # A model file given as init_model is text: it is checked when it is read, not here.
    assert TrainConfig(init_model=str(tmp_path / "missing.npz")).init_model.endswith(".npz")


# --- One schema: every training setting is an option, a grid key and a check ---------------


def command_options(name: str) -> dict[str, object]:
    """The click parameters of a fer command by each of their option spellings."""
    command = typer.main.get_command(app).commands[name]
    return {spelling: param for param in command.params for spelling in param.opts}


def bad_value(rule):
    """A value every door must refuse for a setting (None: the setting has none)."""
    if rule.choices:
        return "nope"
    if rule.kind is bool:
        return "yes"
    if rule.kind in (int, float) and rule.low is not None:
        return rule.kind(rule.low - 1)
    return None


@pytest.mark.parametrize("name", list(TRAIN_SETTINGS))
def test_every_training_setting_is_an_option_of_train_and_crossval_and_a_grid_key(name):
    # Adding a setting is adding a TrainConfig field: the command line and grids follow.
    rule = TRAIN_SETTINGS[name]
    for command in ("train", "crossval"):
        param = command_options(command).get(rule.option)
        assert param is not None, f"fer {command} has no {rule.option}"
        assert param.name == name
        if rule.kind is bool:
            assert param.secondary_opts == [f"--no-{rule.option[2:]}"]
    if name == "seed":
        return  # a grid lists its seeds in seeds = [...]
    value = getattr(recipe_config(DEFAULT_RECIPE), name)
    for key in (name, rule.option[2:], rule.option[2:].replace("-", "_"), *rule.aliases):
        grid = parse_grid({"base": {key: value}, "vary": {"epochs": [1, 2]}}, "g.toml")
        if name == "classes":  # the classes of a whole sweep
            assert grid.classes == value
        else:
            assert grid.base == {name: value}


@pytest.mark.parametrize("name", [name for name, rule in TRAIN_SETTINGS.items() if bad_value(rule)])
def test_every_door_refuses_a_bad_value_of_every_setting_alike(name):
    rule, value = TRAIN_SETTINGS[name], bad_value(TRAIN_SETTINGS[name])
    with pytest.raises(SettingError) as refused:
        TrainConfig(**{name: value})
    message = str(refused.value)
    assert message.startswith(f"{name} ({rule.option}) ") and "\n" not in message
    with pytest.raises(SettingError, match=re.escape(message)):
        fercli.train(**{name: value})
    if name != "seed":
        with pytest.raises(GridError, match=re.escape(f"g.toml: [vary] {name}: {message}")):
            parse_grid({"vary": {name: [value]}}, "g.toml")
    if rule.kind is bool:
        return  # a flag cannot be given a bad value on the command line
    for command in ("train", "crossval"):
        result = CliRunner().invoke(app, [command, rule.option, str(value)])
        if rule.choices:  # the parser refuses a choice not offered, listing them (exit 2)
            assert result.exit_code == 2, result.output
            assert all(choice in result.output for choice in rule.choices)
        else:
            assert result.exit_code == 1, result.output
            assert f"error: {message}" in " ".join(result.output.split())


def test_a_grid_and_the_command_line_take_the_old_spellings():
    grid = parse_grid(
        {
            "base": {"lr": 0.01, "normalization": "pixel", "init": ""},
            "vary": {"flip-tta": [False, True], "max-shift": [0, 2]},
        },
        "g.toml",
    )
    assert grid.base == {"learning_rate": 0.01, "normalisation": "pixel", "init_model": ""}
    assert grid.vary == {"test_time_flip": (False, True), "max_shift": (0.0, 2.0)}
    # The grid's whole numbers for a number setting are numbers (floats), as in a Python call.
    assert all(type(value) is float for value in grid.vary["max_shift"])


def test_numpy_scalars_become_plain_python_values():
    # issue 32 item 9: epochs=np.int64(1) was stored as "epochs": "1" (JSON default=str).
    config = recipe_config(
        "robust",
        epochs=np.int64(3),
        learning_rate=np.float32(0.5),
        flip=np.bool_(False),
        classes=[np.str_("anger"), "fear"],
    )
    assert type(config.epochs) is int and config.epochs == 3
    assert type(config.learning_rate) is float and config.learning_rate == 0.5
    assert config.flip is False and config.classes == ("anger", "fear")
    assert json.loads(json.dumps(config.to_dict()))["epochs"] == 3  # no default=str needed
    assert type(TrainConfig(max_shift=2).max_shift) is float
    assert PreprocessConfig(crop_size=np.int64(48), upsample_tries=(np.int64(0),)).to_dict() == {
        **PreprocessConfig().to_dict(),
        "crop_size": 48,
        "upsample_tries": [0],
    }
    with pytest.raises(SettingError, match="epochs .* must be a whole number"):
        TrainConfig(epochs=np.float64(2.0))


def test_a_model_trained_with_numpy_settings_stores_numbers():
    dataset = save_synthetic(make_dataset(labels=("anger", "happiness"), subjects=2), "two")
    result = fercli.train(dataset.parent.name, recipe="paper", epochs=np.int64(1), copies=0)
    training = load_model(result.path).meta["training"]
    assert training["epochs"] == 1 and type(training["epochs"]) is int
    listed = CliRunner().invoke(app, ["list", "--json"])
    [model] = json.loads(listed.stdout)["models"]
    assert "error" not in model and model["recipe"] == "paper, epochs 1, copies 0"


@pytest.mark.parametrize(
    ("settings", "shown"),
    [
        ({"momentum": 1.0000001}, "momentum (--momentum) 1.0000001 is more than 1,"),
        ({"max_scale": 0.50000001}, "0.50000001 is more than 0.5,"),
        ({"learning_rate": -1e-12}, "learning_rate (--lr) -1e-12 must be at least 0"),
    ],
)
def test_a_range_error_shows_the_value_as_given(settings, shown):
    # issue 32: "--momentum 1.0000001" said "1 is more than 1".
    with pytest.raises(SettingError, match=re.escape(shown)):
        TrainConfig(**settings)
    [(name, value)] = settings.items()
    result = CliRunner().invoke(app, ["train", TRAIN_SETTINGS[name].option, repr(value)])
    assert result.exit_code == 1 and shown in " ".join(result.output.split())


# --- Augmentation's settings without augmentation (issue 32 item 4) -------------------------


@pytest.mark.parametrize(
    ("options", "given", "shown"),
    [
        (["--mixup", "0.4"], {"mixup": 0.4}, "mixup (--mixup 0.4)"),
        (["--photometric", "0.5"], {"photometric": 0.5}, "photometric (--photometric 0.5)"),
        (["--max-scale", "0.3"], {"max_scale": 0.3}, "max_scale (--max-scale 0.3)"),
        (["--no-flip"], {"flip": False}, "flip (--no-flip)"),
        # Given, though it is the default: still a request that would do nothing.
        (["--copies", "5"], {"copies": 5}, "copies (--copies 5)"),
    ],
)
def test_an_augmentation_setting_given_with_no_augment_is_refused(options, given, shown):
    # issue 32 item 4: --no-augment silently dropped --mixup, --photometric and --max-scale.
    message = f"{shown} does nothing with --no-augment: leave one of them out"
    for command in ("train", "crossval"):
        result = CliRunner().invoke(app, [command, "--no-augment", *options])
        assert result.exit_code == 1, result.output
        assert f"error: {message}" in " ".join(result.output.split())
    with pytest.raises(SettingError, match=re.escape(message)):
        fercli.train(augment=False, **given)
    grid = parse_grid({"base": {"augment": False, **given}, "vary": {"epochs": [1, 2]}}, "g.toml")
    with pytest.raises(GridError, match=re.escape(f"g.toml: {message}")):
        recipes(grid)


def test_no_augment_drops_the_recipes_augmentation_and_says_so():
    config = recipe_config("robust", augment=False)
    assert (config.max_scale, config.max_shift) == (0.0, 0.0)  # what training would ignore
    assert config.variant == "batchnorm-dropout" and config.test_time_flip
    assert recipe_differences(config) == {"augment": False}
    assert recipe_dropped(config) == {"max_scale": 0.15, "max_shift": 3.0}
    assert recipe_summary(config.to_dict()) == (
        "recipe robust with --no-augment (so not the recipe's --max-scale 0.15, --max-shift 3)"
    )
    assert recipe_summary(recipe_config("paper", augment=False).to_dict()) == (
        "recipe paper with --no-augment"
    )
    # Set by hand, the same pair is refused.
    with pytest.raises(SettingError, match="does nothing with --no-augment"):
        TrainConfig(augment=False, max_scale=0.15)


def test_a_network_started_from_another_model_trains_the_fine_tuning_epochs(tmp_path: Path):
    from fercli.core.recipes import FINE_TUNE_EPOCHS

    start = str(tmp_path / "general.npz")
    # From scratch, each recipe's own epochs; from another model, the fine-tuning's, which
    # the report's protocol line names as a difference from the recipe.
    for recipe, epochs in (("robust", 100), ("general", 40), ("paper", 100)):
        assert recipe_config(recipe).epochs == epochs
        tuned = recipe_config(recipe, init_model=start)
        assert tuned.epochs == FINE_TUNE_EPOCHS == 10
        assert recipe_differences(tuned) == {"epochs": 10, "init_model": start}
    # Epochs given are kept, the recipe's own number too; the choice of auto is unchanged.
    assert recipe_config("robust", init_model=start, epochs=100).epochs == 100
    assert recipe_config("robust", init_model=start, epochs=3).epochs == 3
    assert recipe_config(DEFAULT_RECIPE, images=30_000, init_model=start).recipe == "general"
    # A sweep grid's recipes come from the same function.
    grid = parse_grid({"base": {"init_model": start}, "vary": {"learning_rate": [0.1]}}, "g.toml")
    assert {recipe.config.epochs for recipe in recipes(grid)} == {10}


def test_a_stored_no_augment_run_with_augmentation_settings_still_reads():
    # A model file of an older fercli, trained with --no-augment --mixup 0.4: the mixup was
    # never applied, and reads as off.
    stored = {**recipe_config("robust").to_dict(), "augment": False, "mixup": 0.4}
    config = TrainConfig.from_dict(stored)
    assert config.mixup == 0.0 and config.augment is False
    assert recipe_summary(stored) == (
        "recipe robust with --no-augment (so not the recipe's --max-scale 0.15, --max-shift 3)"
    )


def test_summaries_speak_the_command_line():
    config = recipe_config("robust", epochs=2, test_time_flip=False, classes=("anger", "fear"))
    assert recipe_summary(config.to_dict()) == "recipe robust with --epochs 2, --no-flip-tta"
    assert recipe_summary(recipe_config("paper", learning_rate=0.01).to_dict()) == (
        "recipe paper with --lr 0.01"
    )


# --- Help shows what a plain `fer train` uses (issue 31 item 4) -----------------------------


def test_help_shows_the_default_recipes_values():
    plain, paper = recipe_config(DEFAULT_RECIPE), recipe_config("paper")
    for command in ("train", "crossval"):
        options = command_options(command)
        for name, rule in TRAIN_SETTINGS.items():
            value = getattr(plain, name)
            if name == "recipe" or value in ("", ()):
                continue
            word = ("on" if value else "off") if isinstance(value, bool) else shown_value(value)
            help_text = options[rule.option].help
            assert f"(default: {word}" in help_text, (command, name, help_text)
            if getattr(paper, name) != value:
                assert "; --recipe paper: " in help_text
    assert "(default: 0.15; --recipe paper: 0)" in command_options("train")["--max-scale"].help
    assert "(default: batchnorm-dropout; --recipe paper: paper)" in (
        command_options("train")["--variant"].help
    )


# --- Every *Config checks itself ------------------------------------------------------------


def test_scan_video_and_live_settings_check_themselves(tmp_path):
    from fercli.infer.tracking import VideoConfig
    from fercli.web.live import LiveConfig

    assert ScanConfig(layout="CK").layout == "CK" and ScanConfig(layout="fer2013")
    for settings, message in [
        ({"layout": "csv"}, "layout (--layout) 'csv' is not one of jaffe, ck+, folders, fer2013"),
        ({"ck_frames": 0}, "ck_frames (--ck-frames) 0 must be at least 1"),
        ({"ck_neutral_first": "yes"}, "must be true or false"),
    ]:
        with pytest.raises(SettingError, match=re.escape(message)):
            ScanConfig(**settings)
    for settings, message in [
        ({"fps": 0.0}, "fps (--fps) 0 must be more than 0"),
        ({"fps": math.nan}, "fps (--fps) must be a finite number, not nan"),
        ({"fps": 1e308}, "fps (--fps) 1e+308 is more than 1000000, the largest that makes sense"),
        ({"smooth": math.inf}, "smooth (--smooth) must be a finite number, not inf"),
        ({"smooth": -1.0}, "smooth (--smooth) -1 must be at least 0"),
        ({"every": 0}, "every (--every) 0 must be at least 1"),
        ({"detect_every": 2.5}, "detect_every (--detect-every) must be a whole number"),
    ]:
        with pytest.raises(SettingError, match=re.escape(message)):
            VideoConfig(**settings)
    assert VideoConfig(fps=np.float32(2.5), every=np.int64(2)).fps == 2.5
    assert VideoConfig(fps=None).fps is None
    assert LiveConfig(record=str(tmp_path / "x.csv")).record == tmp_path / "x.csv"
    for settings, message in [
        ({"detect_every": 0}, "detect_every (--detect-every) 0 must be at least 1"),
        ({"record": ""}, "record (--record) must be a file name"),
        ({"loop": 1}, "loop (--loop) must be true or false"),
    ]:
        with pytest.raises(SettingError, match=re.escape(message)):
            LiveConfig(**settings)


def test_the_command_line_refuses_video_settings_as_videoconfig_does(tmp_path):
    for options, message in [
        (["--fps", "0"], "fps (--fps) 0 must be more than 0"),
        (["--fps", "nan"], "fps (--fps) must be a finite number, not nan"),
        # It once ended in a traceback (OverflowError) once the video was read.
        (["--fps", "1e308"], "fps (--fps) 1e+308 is more than 1000000, the largest that"),
        (["--smooth", "inf"], "smooth (--smooth) must be a finite number, not inf"),
    ]:
        result = CliRunner().invoke(app, ["predict", str(tmp_path), *options])
        assert result.exit_code == 1, result.output
        assert f"error: {message}" in " ".join(result.output.split())


def test_a_summary_of_settings_an_older_fercli_stored_as_text_is_one_phrase():
    # issue 32 item 9: `fer evaluate` on a model whose metadata says "epochs": "1" wrote its
    # report, then crashed with a traceback while naming the model's recipe.
    stored = {**recipe_config("robust").to_dict(), "epochs": "1"}
    assert recipe_summary(stored) == (
        "settings not readable (epochs (--epochs) must be a whole number, not '1')"
    )


def config_classes():
    from fercli.infer.tracking import VideoConfig
    from fercli.web.live import LiveConfig

    return [PreprocessConfig, ScanConfig, TrainConfig, VideoConfig, LiveConfig]


@pytest.mark.parametrize("config", config_classes(), ids=lambda config: config.__name__)
def test_every_config_declares_and_checks_each_of_its_settings(config):
    from dataclasses import fields

    declared = settings_of(config)
    # upsample_tries (a list of levels) has a check of its own in PreprocessConfig.
    assert {item.name for item in fields(config)} - set(declared) <= {"upsample_tries"}
    config()  # the defaults pass
    for name, rule in declared.items():
        with pytest.raises(SettingError, match=re.escape(rule.where(name))):
            config(**{name: object()})
