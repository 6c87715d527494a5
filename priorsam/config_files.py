"""JSON files the user names on a command line (training configs, run lists, case lists): read in one
place, so a missing, unreadable or malformed file, or a setting no config class has, is one clear line."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Iterable

from .errors import InputError


def read_json(path: str | Path, what: str) -> Any:
    """The JSON value in ``path``; ``what`` (e.g. "training config") names the file in the error."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise InputError(f"{what} {path}: no such file") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{what} {path} cannot be read: {getattr(exc, 'strerror', None) or exc}") from exc
    except json.JSONDecodeError as exc:
        raise InputError(f"{what} {path} is not valid JSON: {exc}") from exc


def read_settings(path: str | Path, cls, what: str, fixed: Iterable[str] = ()) -> dict:
    """The JSON object of ``cls``'s dataclass fields in ``path``; names no field of ``cls`` has, or that the
    command sets itself (``fixed``, e.g. the output folder), are refused by name."""
    fields = read_json(path, what)
    if not isinstance(fields, dict):
        raise InputError(f"{what} {path} must hold a JSON object of settings")
    check_setting_names(fields, cls, f"{what} {path}", fixed)
    return fields


def check_setting_names(fields: dict, cls, where: str, fixed: Iterable[str] = ()) -> None:
    """Refuse names that are not settable fields of the dataclass ``cls``, listing the ones that are."""
    settable = {f.name for f in dataclasses.fields(cls)} - set(fixed)
    unknown = sorted(set(fields) - settable)
    if unknown:
        raise InputError(f"{where}: unknown setting(s) {', '.join(unknown)}; the settings are: "
                         f"{', '.join(sorted(settable))}")
