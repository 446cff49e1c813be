"""Loading the configuration: the YAML file and ``LABD_*`` variables, merged and checked."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    ValidationError,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    SettingsError,
)

from labd.config.settings import _ENV_NESTED_DELIMITER, ENV_PREFIX, Config

__all__ = ["ConfigError", "ConfigProblem", "load_config"]

# ---------------------------------------------------------------------------
# Problems and errors


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One thing wrong with the configuration."""

    location: str
    """Where: a dotted key path (``sizes.small.limits.cpu``), or the file."""

    message: str
    """Why it is wrong, never echoing a secret."""

    env_var: str | None = None
    """The environment variable that supplied the bad value, if any."""

    def __str__(self) -> str:
        if self.env_var and self.location:
            return f"{self.env_var} ({self.location}): {self.message}"
        where = self.env_var or self.location
        return f"{where}: {self.message}" if where else self.message


class ConfigError(Exception):
    """The configuration cannot be loaded; `problems` says why.

    Parameters
    ----------
    problems
        Everything found wrong, in a stable order.
    """

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


# ---------------------------------------------------------------------------
# Loading


_MAX_DEPTH = 32
"""Deepest nesting a settings file may have.

labd's deepest key is five levels down.  PyYAML's composer and constructor
recurse at least once per level, so a file of 100,000 ``[`` would end in a
`RecursionError`; refusing anything deeper than this first names the line.
"""


class _YamlLimitError(yaml.MarkedYAMLError):
    """Well-formed YAML that labd will not read: too deep, or a value Python refuses."""


class _YamlLoader(yaml.SafeLoader):
    """A safe loader that refuses duplicate keys, which YAML would drop.

    It also refuses nesting deeper than `_MAX_DEPTH`, integers beyond 64
    bits and scalars Python cannot build (a 13th month), as problems with a
    line and column instead of the exceptions PyYAML lets through.
    """

    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        """Compose one node, counting how deep it sits."""
        if self._depth >= _MAX_DEPTH:
            # The next event starts the node too deep; the stubs leave it untyped.
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise _YamlLimitError(
                problem=f"nested more than {_MAX_DEPTH} levels deep",
                problem_mark=event.start_mark,
            )
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        """Construct one node; a `ValueError` of a scalar gets the node's position."""
        try:
            return super().construct_object(node, deep=deep)
        except ValueError as exc:
            # The innermost node raises; outer ones see a YAMLError, not this.
            raise _YamlLimitError(
                problem=_unreadable_scalar(node, exc), problem_mark=node.start_mark
            ) from None


def _unreadable_scalar(node: yaml.Node, exc: ValueError) -> str:
    text = node.value if isinstance(node.value, str) else ""
    shown = text if len(text) <= 40 else text[:40] + "..."
    return f"cannot read {shown!r} as {node.tag.rpartition(':')[2]}: {exc}"


def _construct_int(loader: _YamlLoader, node: yaml.ScalarNode) -> int:
    """Construct an integer that fits in 64 bits, as every integer setting must.

    Python refuses to convert more than 4300 decimal digits (a `ValueError`
    advising ``sys.set_int_max_str_digits()``) but takes any number of hex
    digits, which then fails wherever labd prints or stores the value.
    """
    try:
        value = loader.construct_yaml_int(node)
    except ValueError:
        value = None
    if value is None or not -(2**63) <= value < 2**63:
        raise _YamlLimitError(
            problem="integer out of range (beyond 64 bits)", problem_mark=node.start_mark
        )
    return value


def _construct_mapping(loader: _YamlLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if isinstance(key, list | dict):
            # A YAML complex key (`? [a]`); `key in seen` would raise TypeError.
            raise yaml.constructor.ConstructorError(
                None,
                None,
                "a key must be a plain value, not a list or mapping",
                key_node.start_mark,
            )
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"duplicate key {key!r} (first defined on line {seen[key] + 1})",
                key_node.start_mark,
            )
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=True)


_YamlLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_YamlLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)


def _read_settings_file(path: Path) -> dict[str, Any]:
    where = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([ConfigProblem(where, "no such file")]) from None
    except IsADirectoryError:
        raise ConfigError([ConfigProblem(where, "is a directory, not a file")]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([ConfigProblem(where, f"not UTF-8 text ({exc.reason})")]) from None
    except OSError as exc:
        raise ConfigError([ConfigProblem(where, f"cannot read: {exc.strerror}")]) from None
    try:
        data = yaml.load(text, Loader=_YamlLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        position = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = exc.problem or "invalid YAML"
        if exc.context:
            started = exc.context_mark
            where_started = f" started on line {started.line + 1}" if started else ""
            problem = f"{problem} ({exc.context}{where_started})"
        kind = "invalid YAML" if isinstance(exc, _YamlLimitError) else "YAML syntax error"
        raise ConfigError([ConfigProblem(where, f"{kind}: {position}{problem}")]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([ConfigProblem(where, f"YAML syntax error: {exc}")]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            [
                ConfigProblem(
                    where,
                    f"the top level must be a mapping of keys to values, not {_yaml_type(data)}",
                )
            ]
        )
    return data


def _yaml_type(value: object) -> str:
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    return f"a {type(value).__name__}"


class _EnvironSource(EnvSettingsSource):
    """The ``LABD_*`` variables of a given mapping instead of `os.environ`."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {key.lower(): value for key, value in self._environ.items()}

    def decode_complex_value(self, field_name: str, field: FieldInfo, value: Any) -> Any:
        """Decode a JSON value; nesting too deep for `json` is a `ValueError`.

        `json.loads` raises `RecursionError` on about a thousand ``[`` and
        pydantic-settings reports only `ValueError` as a bad value.
        """
        try:
            return super().decode_complex_value(field_name, field, value)
        except RecursionError:
            raise ValueError("nested too deeply") from None


def _env_paths(environ: Mapping[str, str]) -> dict[str, tuple[str, ...]]:
    """Map each ``LABD_*`` variable to the key path it sets."""
    prefix = ENV_PREFIX.lower()
    return {
        name: tuple(name[len(prefix) :].lower().split(_ENV_NESTED_DELIMITER))
        for name in environ
        if name.lower().startswith(prefix)
    }


def _resolves(data: Any, loc: tuple[str | int, ...]) -> bool:
    for part in loc:
        in_mapping = isinstance(data, Mapping) and part in data
        in_list = isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data)
        if not (in_mapping or in_list):
            return False
        data = data[part]
    return True


def _env_var_for(
    loc: tuple[str | int, ...], env_data: Mapping[str, Any], env_paths: dict[str, tuple[str, ...]]
) -> str | None:
    """Name the variable(s) that supplied the value at `loc`, if any did."""
    if not loc or not _resolves(env_data, loc):
        return None
    keys = tuple(str(part).lower() for part in loc)
    covering = [(len(path), name) for name, path in env_paths.items() if keys[: len(path)] == path]
    if covering:
        return max(covering)[1]
    inside = sorted(name for name, path in env_paths.items() if path[: len(keys)] == keys)
    return ", ".join(inside) or None


def _format_loc(loc: tuple[str | int, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text


def _problems_from(
    exc: ValidationError, env_data: Mapping[str, Any], environ: Mapping[str, str]
) -> list[ConfigProblem]:
    paths = _env_paths(environ)
    problems = []
    for error in exc.errors(include_url=False, include_input=False):
        loc = tuple(error["loc"])
        message = error["msg"]
        context = error.get("ctx") or {}
        if error["type"] in ("value_error", "assertion_error") and "error" in context:
            message = str(context["error"])
        elif error["type"] == "extra_forbidden":
            message = "unknown key (check the spelling)"
        elif error["type"] == "missing":
            message = "required key is missing"
        # A missing key has no value to trace; its parent's origin is the
        # best hint (an environment variable that created a partial entry).
        origin = loc[:-1] if error["type"] == "missing" else loc
        problems.append(
            ConfigProblem(_format_loc(loc), message, env_var=_env_var_for(origin, env_data, paths))
        )
    return problems


def load_config(path: Path | None, *, environ: Mapping[str, str] | None = None) -> Config:
    """Load and validate the configuration.

    Parameters
    ----------
    path
        The YAML settings file, or `None` for defaults and environment only.
    environ
        Where ``LABD_*`` overrides come from; `os.environ` if `None`.

    Returns
    -------
    Config
        The validated configuration.

    Raises
    ------
    ConfigError
        If the file cannot be read or parsed, or any value is invalid. Its
        ``problems`` list every failure found, each naming the key (and the
        environment variable, when one supplied the value).
    """
    if environ is None:
        environ = os.environ
    file_data = _read_settings_file(path) if path is not None else {}
    try:
        env_data = _EnvironSource(Config, environ)()
    except SettingsError as exc:
        raise ConfigError([_problem_from_settings_error(exc, environ)]) from None
    try:
        return Config.model_validate(_merge(file_data, _align_size_names(file_data, env_data)))
    except ValidationError as exc:
        raise ConfigError(_problems_from(exc, env_data, environ)) from None


def _merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Merge `override` into `base` key by key, recursing into mappings."""
    merged = dict(base)
    for key, value in override.items():
        current = merged.get(key)
        if isinstance(current, Mapping) and isinstance(value, Mapping):
            merged[key] = _merge(current, value)
        else:
            merged[key] = value
    return merged


def _align_size_names(file_data: dict[str, Any], env_data: dict[str, Any]) -> dict[str, Any]:
    """Spell size names from the environment as the file does, so they merge.

    Environment names are case-insensitive and arrive lowercased; a file's
    ``Small`` must still receive ``LABD_SIZES__SMALL__...`` rather than
    collide with it as a duplicate size.
    """
    file_sizes, env_sizes = file_data.get("sizes"), env_data.get("sizes")
    if not isinstance(file_sizes, dict) or not isinstance(env_sizes, dict):
        return env_data
    spelling = {name.lower(): name for name in file_sizes if isinstance(name, str)}
    renamed = {spelling.get(name.lower(), name): size for name, size in env_sizes.items()}
    return {**env_data, "sizes": renamed}


def _problem_from_settings_error(exc: SettingsError, environ: Mapping[str, str]) -> ConfigProblem:
    """Explain an environment value pydantic-settings could not decode (bad JSON)."""
    match = re.search(r'field "([^"]+)"', str(exc))
    field = match[1] if match else ""
    names = [name for name, path in _env_paths(environ).items() if path[:1] == (field,)]
    cause = exc.__cause__
    reason = f"not valid JSON ({cause})" if cause else "cannot be decoded"
    return ConfigProblem(field, reason, env_var=", ".join(sorted(names)) or None)
