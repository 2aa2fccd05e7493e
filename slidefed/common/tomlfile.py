"""TOML config files: read one into a pydantic model, write one from plain data.

Writing goes through ``tomli-w`` so that any string (a path with a quote, a newline
or a backslash) comes back as it went in.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, TypeVar

import tomli_w
from pydantic import BaseModel, ValidationError

from slidefed.common.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


def _first_error(exc: ValidationError, *, where: str) -> ConfigError:
    err = exc.errors()[0]
    key = ".".join(str(p) for p in err["loc"]) or "(top level)"
    value = err.get("input")
    shown = "" if isinstance(value, dict) else f"={value!r}"
    return ConfigError(
        f"{where}: {key}{shown} is invalid: {err['msg']}; "
        f"fix {key} in {where} and run again"
    )


def load_toml_model(path: Path, model: type[M], *, what: str, create: str) -> M:
    """Read a TOML config file into ``model``; ``base_dir`` is the file's folder.

    Raises
    ------
    ConfigError
        If the file is missing (``create`` says how to make one), is not TOML, or
        a value breaks a rule (the message names the key and the fix).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"{path}: {what} not found; create one with '{create}' or pass --config PATH"
        )
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc}); fix the syntax") from exc
    raw["base_dir"] = str(path.parent.resolve())
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise _first_error(exc, where=str(path)) from exc


def dump_toml(data: dict[str, Any]) -> str:
    """Render nested plain data as TOML, leaving out keys whose value is ``None``."""
    return tomli_w.dumps(_drop_none(data))


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, tuple):
        return [_drop_none(v) for v in value]
    return value


__all__ = ["dump_toml", "load_toml_model"]
