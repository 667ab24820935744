"""Settings check themselves (fercli.core.config): the command line, a sweep grid and a Python
call refuse the same values with the same message, before any training."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

import fercli
from fercli.cli import app
from fercli.core.config import (
    TRAIN_SETTINGS,
    PreprocessConfig,
    TrainConfig,
    recipe_config,
)
from fercli.core.errors import GridError, SettingError
from fercli.learn.grid import parse_grid
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
