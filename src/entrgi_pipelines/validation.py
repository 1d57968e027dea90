"""Argument checks shared by the public API and the command-line tools.

Every refusal is a `ValueError` or `TypeError` (in the command-line tools: exit status 2 and one line on stderr)
that names the argument, the value received and what is allowed, raised before any model work.
"""

from __future__ import annotations

import argparse
import json
import math
import numbers
import re
from pathlib import Path
from typing import Any


class ArgumentTypeError(TypeError, ValueError):
    """An argument of the wrong type. A `TypeError`, and also a `ValueError` because the pipeline raised `ValueError`
    for some wrong types (a float step count, a string learning rate) before every check went through this module:
    code that catches either keeps working."""


def check_number(
    name: str,
    value: Any,
    *,
    low: float = -math.inf,
    high: float = math.inf,
    low_open: bool = False,
    high_open: bool = False,
    none_ok: bool = False,
) -> None:
    """Refuses anything but a finite real number in `[low, high]` (ends open where told); `None` when `none_ok`."""
    if value is None and none_ok:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ArgumentTypeError(f"`{name}` must be a number, got {type(value).__name__} {value!r}.")
    above = value > low if low_open else value >= low
    below = value < high if high_open else value <= high
    if not (math.isfinite(value) and above and below):
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        none = " or None" if none_ok else ""
        raise ValueError(f"`{name}` must be a finite number in {interval}{none}, got {value!r}.")


def check_integer(name: str, value: Any, *, minimum: int = 0, none_ok: bool = False) -> None:
    """Refuses anything but an integer `>= minimum` (bools are refused); `None` when `none_ok`."""
    if value is None and none_ok:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ArgumentTypeError(f"`{name}` must be an integer >= {minimum}, got {type(value).__name__} {value!r}.")
    if value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value!r}.")


def check_choice(name: str, value: Any, choices: tuple, *, none_ok: bool = False) -> None:
    """Refuses a value outside `choices` (`None` allowed when `none_ok`)."""
    if not (value is None and none_ok) and value not in choices:
        raise ValueError(f"`{name}` must be one of {choices}{' or None' if none_ok else ''}, got {value!r}.")


def check_instance(
    name: str, value: Any, types: type | tuple[type, ...], expected: str, *, none_ok: bool = False
) -> None:
    """Refuses a value that is not an instance of `types` (`expected` says what is allowed, e.g. "a string")."""
    if not (value is None and none_ok) and not isinstance(value, types):
        none = " or None" if none_ok else ""
        raise ArgumentTypeError(f"`{name}` must be {expected}{none}, got {type(value).__name__} {value!r:.80}.")


def check_text_list(name: str, value: Any, *, none_ok: bool = False, blank_ok: bool = False) -> list[str] | None:
    """A string or a non-empty list of strings (non-blank unless `blank_ok`), returned as a list (`None` when
    `none_ok`)."""
    if value is None and none_ok:
        return None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ArgumentTypeError(f"`{name}` must be a string or a list of strings, got {value!r:.80}.")
    if not value or (not blank_ok and any(not v.strip() for v in value)):
        blank = "" if blank_ok else " non-empty"
        raise ValueError(f"`{name}` must be a{blank} string or a non-empty list of{blank} strings.")
    return value


# Command-line tools


class StrictArgumentParser(argparse.ArgumentParser):
    """An `ArgumentParser` without option abbreviations whose errors are one line on stderr and exit status 2.

    Subcommand parsers made with `add_subparsers().add_parser(...)` are of the same class.
    """

    def __init__(self, *args, **kwargs):
        kwargs["allow_abbrev"] = False  # `--reward x` must never be read as `--reward-model x`
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        message = " ".join(str(message).split())
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _number(kind, text: str, low: float, high: float, low_open: bool, high_open: bool):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected {'an integer' if kind is int else 'a number'}, got {text!r}"
        ) from None
    try:
        check_number("value", value, low=low, high=high, low_open=low_open, high_open=high_open)
    except ValueError:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        allowed = f"an integer >= {low:g}" if kind is int else f"a finite number in {interval}"
        raise argparse.ArgumentTypeError(f"must be {allowed}, got {text!r}") from None
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _number(int, text, 1, math.inf, False, True)


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _number(int, text, 0, math.inf, False, True)


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    return _number(float, text, 0, math.inf, True, True)


def non_negative_float(text: str) -> float:
    """argparse type: a finite number >= 0."""
    return _number(float, text, 0, math.inf, False, True)


def probability(text: str) -> float:
    """argparse type: a number in (0, 1]."""
    return _number(float, text, 0, 1, True, False)


def model_folder(text: str) -> str:
    """argparse type: an existing folder written by `save_pretrained` (never looked up on a model hub)."""
    path = Path(text).expanduser()
    if not path.exists():
        raise argparse.ArgumentTypeError(f"no such model folder: {text!r} (pass a folder written by save_pretrained)")
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a file, not a model folder (pass the folder that holds it)")
    if not (path / "config.json").is_file():
        raise argparse.ArgumentTypeError(f"{text!r} is not a model folder: it has no config.json")
    return str(path)


# A Hub repo id: "org/name" (letters, digits, `-`, `_`, `.`), never a path (no leading `/` or `.`, one `/`).
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")


def is_repo_id(text: str) -> bool:
    """Whether `text` reads as a Hub repo id (`org/name`) rather than a path."""
    return bool(_REPO_ID.match(text)) and ".." not in text


def model_source(text: str) -> str:
    """argparse type: an existing model folder (as [`model_folder`]) or a Hub repo id `org/name`.

    A repo id is only checked for its form here; whether it is in the local Hub cache (offline) or on the Hub is
    checked before any model work by the tool that loads it.
    """
    if Path(text).expanduser().exists() or not is_repo_id(text):
        try:
            return model_folder(text)
        except argparse.ArgumentTypeError as error:
            if Path(text).expanduser().exists():
                raise
            raise argparse.ArgumentTypeError(f"{error}, or a Hub repo id such as 'org/name'") from None
    return text


def existing_file(text: str) -> str:
    """argparse type: an existing, readable file."""
    path = Path(text).expanduser()
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"no such file: {text!r}" if not path.exists() else f"{text!r} is a folder")
    return str(path)


def read_jsonl(path: str | Path, text: str | None = None) -> list[dict]:
    """The JSON objects of a JSONL file (blank lines skipped); a bad line is a ValueError naming the file and line."""
    text = Path(path).read_text() if text is None else text
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} line {number} is not valid JSON ({error.msg})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path} line {number} must be a JSON object, got {type(row).__name__}")
        rows.append(row)
    return rows


def exit_on_bad_input(parser: argparse.ArgumentParser, check, *args, **kwargs):
    """Runs `check(*args, **kwargs)`; a ValueError, TypeError or OSError it raises becomes `parser.error` (exit 2)."""
    try:
        return check(*args, **kwargs)
    except (ValueError, TypeError, OSError) as error:
        parser.error(str(error))
