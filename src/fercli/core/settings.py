"""How a setting is declared and checked, once: a Setting beside its dataclass field
(setting()), from which the command line's options, a sweep grid's keys and the checks of a
Python call are made. The settings themselves are in fercli.core.config."""

from __future__ import annotations

import math
import numbers
import os
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from fercli.core.errors import SettingError


@dataclass(frozen=True)
class Setting:
    """What one setting may be, declared once beside its field (see setting()): its
    command-line option (also named in messages), its type, its choices or range, its help
    text and the other spellings a sweep grid accepts. The command line's options, a grid's
    keys and their coercion, and the checks a Python call gets are all made from it."""

    option: str
    kind: type
    choices: tuple = ()
    low: float | None = None
    high: float | None = None
    # The low end itself is refused (a learning rate of 0 learns nothing).
    above_low: bool = False
    # None is a value of the setting too (not given, or off).
    optional: bool = False
    # The command line's help, without the default (added from the recipes where shown).
    help: str = ""
    # Spellings a grid accepts besides the field's name and the option's ("normalization").
    aliases: tuple[str, ...] = ()
    # What the command line's help shows as the option's value ("MODEL").
    metavar: str | None = None
    # The bool setting without which this one does nothing (augmentation's settings without
    # augment): set while that is off, it is refused rather than silently dropped.
    only_with: str | None = None

    def where(self, name: str) -> str:
        """The setting as messages name it: `lr (--lr)`, or the name alone."""
        return f"{name} ({self.option})" if self.option != name else name

    def check(self, name: str, value: object) -> object:
        """value as the plain Python value it stands for (a NumPy scalar as the int, float or
        bool it holds, a whole number as a float where a number is asked for, a list of
        names as a tuple); SettingError, naming the setting, unless it is a valid value."""
        where = self.where(name)
        value = plain(value)
        if value is None and self.optional:
            return None
        converted = self._converted(where, value)
        if self.choices and converted not in self.choices:
            raise SettingError(f"{where} {converted!r} is not one of {', '.join(self.choices)}")
        if self.kind in (int, float):
            self._check_range(where, converted)
        return converted

    def _converted(self, where: str, value: object) -> object:
        kind = self.kind
        if kind is bool and isinstance(value, bool):
            return value
        if kind is str and isinstance(value, str):
            return str(value)
        if kind is int and isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return int(value)
        if kind is float and isinstance(value, numbers.Real) and not isinstance(value, bool):
            return _finite(where, value)
        if kind is tuple and isinstance(value, (tuple, list)):
            names = [plain(item) for item in value]
            if all(isinstance(item, str) for item in names):
                return tuple(str(item) for item in names)
        if kind is Path and isinstance(value, (str, os.PathLike)):
            text = os.fspath(value)
            if isinstance(text, str) and text:
                return Path(text)
        raise SettingError(f"{where} must be {KIND_WORDS.get(kind, kind.__name__)}, not {value!r}")

    def _check_range(self, where: str, value) -> None:
        if self.low is not None and (value <= self.low if self.above_low else value < self.low):
            relation = "more than" if self.above_low else "at least"
            raise SettingError(f"{where} {number(value)} must be {relation} {number(self.low)}")
        if self.high is not None and value > self.high:
            raise SettingError(
                f"{where} {number(value)} is more than {number(self.high)}, the largest that "
                "makes sense"
            )

    def command_line(self, value: object) -> str:
        """value as the option that gives it: `--no-augment`, `--lr 0.01`, `--classes a,b`."""
        if self.kind is bool:
            return self.option if value else f"--no-{self.option.removeprefix('--')}"
        return f"{self.option} {shown_value(value)}"


# How a refusal names what a setting of each type must be.
KIND_WORDS = {
    bool: "true or false",
    str: "text",
    int: "a whole number",
    float: "a number",
    tuple: "a list of names",
    Path: "a file name",
}


def plain(value: object) -> object:
    """A NumPy scalar (np.int64(3), np.float32, np.bool_) as the Python value it holds, so that
    settings stored as JSON stay numbers; anything else as it is. NumPy is not imported."""
    if type(value).__module__ == "numpy" and getattr(value, "shape", None) == ():
        return value.item()
    return value


def _finite(where: str, value: numbers.Real) -> float:
    try:
        converted = float(value)
    except OverflowError:  # a whole number beyond any float
        converted = math.inf
    if not math.isfinite(converted):
        raise SettingError(f"{where} must be a finite number, not {value}")
    return converted


def number(value) -> str:
    """A number as given, to its last digit (1.0000001 is not 1), without a trailing .0."""
    if isinstance(value, float):
        text = repr(value)
        return text[:-2] if text.endswith(".0") else text
    return str(value)


def shown_value(value: object) -> str:
    """A setting's value as the command line writes it: 0.15, on/off aside, a,b for lists."""
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value))
    return number(value) if isinstance(value, float) else str(value)


def setting(default: object, option: str, kind: type | None = None, **rules) -> Any:
    """A field of a settings dataclass with its Setting (kept in the field's metadata): the
    default, the command-line option, the type (by default the default's), and the rest of
    Setting's rules (choices, low, high, help, ...)."""
    rule = Setting(option, kind or type(default), optional=default is None, **rules)
    return field(default=default, metadata={"setting": rule})


def settings_of(config: object) -> dict[str, Setting]:
    """The Setting of every field of a settings dataclass (or instance) that has one, in the
    fields' order."""
    return {
        item.name: item.metadata["setting"] for item in fields(config) if "setting" in item.metadata
    }


def check_settings(config: object, settings: dict[str, Setting] | None = None) -> None:
    """Every field of a settings dataclass checked against its Setting, and set to the plain
    Python value it stands for (frozen or not); SettingError for the first that is not valid."""
    for name, rule in (settings or settings_of(config)).items():
        value = getattr(config, name)
        checked = rule.check(name, value)
        if checked is not value:
            object.__setattr__(config, name, checked)


def defaults_of(config: object) -> dict[str, object]:
    """Each field's default value (fields with a default factory left out)."""
    return {item.name: item.default for item in fields(config) if item.default is not MISSING}


def check_switches(config: object) -> None:
    """SettingError for a setting that does nothing because the switch it needs is off
    (Setting.only_with) while it differs from its default: `--no-augment --mixup 0.4` would
    train exactly as `--no-augment` does."""
    settings, defaults = settings_of(config), defaults_of(config)
    for name, rule in settings.items():
        if rule.only_with and getattr(config, rule.only_with) is False:
            value = getattr(config, name)
            if value != defaults[name]:
                raise unused_setting(settings, name, value)


def unused_setting(settings: dict[str, Setting], name: str, value: object) -> SettingError:
    """The refusal of a setting given while the switch it needs is off."""
    rule = settings[name]
    switch = settings[rule.only_with]
    return SettingError(
        f"{name} ({rule.command_line(value)}) does nothing with "
        f"{switch.command_line(False)}: leave one of them out"
    )


def spellings(config: object) -> dict[str, str]:
    """Every spelling of a settings dataclass's settings (the field's name, its option's,
    the aliases; hyphens as underscores) -> the field's name."""
    table = {}
    for name, rule in settings_of(config).items():
        for spelling in (name, rule.option.removeprefix("--"), *rule.aliases):
            table[spelling.replace("-", "_")] = name
    return table
