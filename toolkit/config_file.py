"""Settings from a file: ``--config PATH`` on a recipe's command line.

The file is a JSON or YAML mapping of setting to value, for instance a run's own ``config.json`` (rerun a run's
settings: ``--config runs/R0/config.json --run-name R0-again``) or a file of settings kept with an experiment.
The command line's settings win over the file's; keys may be spelt ``some-key`` or ``some_key``; an unknown key is
refused naming the file and listing the valid ones, and values are converted by each field's type as on the
command line (lists may be JSON/YAML lists: ``widths: [16, 32, 64]``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from .config import ConfigError

__all__ = ["CONFIG_FLAG", "split_config_flag", "file_settings", "given_settings"]

CONFIG_FLAG = "--config"
#: keys a run's config.json holds beside the recipe's settings
NOT_SETTINGS = ("recipe",)


def split_config_flag(argv: Sequence[str]) -> tuple[list[str], Path | None]:
    """``argv`` without ``--config PATH`` (or ``--config=PATH``) and that path (None when not given). Raises
    ConfigError when it is given twice or without a path."""
    rest, found = [], []
    i = 0
    while i < len(argv):
        token = argv[i]
        if token == CONFIG_FLAG:
            if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
                raise ConfigError(f"{CONFIG_FLAG} needs a path (a JSON or YAML file of settings)")
            found.append(argv[i + 1])
            i += 2
            continue
        if token.startswith(CONFIG_FLAG + "="):
            found.append(token.partition("=")[2])
        else:
            rest.append(token)
        i += 1
    if len(found) > 1:
        raise ConfigError(f"{CONFIG_FLAG} given twice ({', '.join(found)}); give one file")
    return rest, (Path(found[0]) if found else None)


def file_settings(path: Path, names: Sequence[str]) -> dict[str, str]:
    """The settings of the file ``path`` as command-line words, ``{field: raw string}``: booleans as
    true/false, null as none, lists joined by commas, numbers and strings as they are. ``names`` are the
    recipe's fields. Raises ConfigError naming the file when it cannot be read, is not a mapping, or holds a
    key that is not one of ``names``."""
    out = {}
    for key, value in _read_mapping(path).items():
        field = key.replace("-", "_")
        if field not in names:
            raise ConfigError(f"{CONFIG_FLAG} {path}: unknown config key {key!r}; valid keys: {', '.join(names)}")
        out[field] = _word(value)
    return out


def given_settings(argv: Sequence[str]) -> dict[str, str]:
    """What a recipe command line ``argv`` sets, ``{field: raw word}`` (``--some-key`` as ``some_key``; a bare
    ``--flag`` as ``"true"``; :func:`~toolkit.compare.settings_of` reads the command line), the settings of its
    ``--config`` file under those of the command line, for a caller that must know them before the recipe runs
    (the recipe itself checks the keys and values). Raises ConfigError for a ``--config`` given twice or a file
    that cannot be read as a mapping."""
    from .compare import settings_of  # here, not at the top: every recipe's config parsing imports this module

    rest, path = split_config_flag(argv)
    given = {key.replace("-", "_"): _word(value) for key, value in _read_mapping(path).items()} if path else {}
    return {**given, **settings_of(list(rest))}


def _read_mapping(path: Path) -> dict:
    """The file's mapping (keys as spelt there, as strings), without the keys a run's config.json holds beside its
    settings. ConfigError naming the file when it cannot be read or is not a mapping."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{CONFIG_FLAG} {path}: cannot read it ({err})") from None
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as err:  # noqa: BLE001 - json.JSONDecodeError, yaml.YAMLError
        raise ConfigError(f"{CONFIG_FLAG} {path}: not readable as {_kind(path)} ({err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{CONFIG_FLAG} {path}: expected a mapping of setting to value, got "
                          f"{type(data).__name__}")
    return {str(k): v for k, v in data.items() if str(k).replace("-", "_") not in NOT_SETTINGS}


def _kind(path: Path) -> str:
    return "YAML" if path.suffix.lower() in (".yaml", ".yml") else "JSON"


def _word(value) -> str:
    """A JSON/YAML value as the command line would give it."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(_word(v) for v in value)
    return str(value)
