"""Command-line overrides of a sweep config: ``kd-ray sweep CONFIG --set student.train.lr=0.05``.

Each ``--set KEY=VALUE`` names a field by its dotted path (list items by their index:
``datasets.0.root``) and gives a value read with ``yaml.safe_load``, so ``0.05`` is a float,
``[0,1,2]`` a list, ``true`` a bool and ``{lr: 0.05}`` a mapping. The overrides are applied to
the config file's content with every default filled in, and the result is validated by the same
schema as the file (:func:`kd_ray.config.parse_config`); the sweep then runs, saves and resumes
the effective config.

Why on the resolved config and not on the file's raw YAML: a section missing from the file
takes its default from its parent, which is not its own class's default
(``student.train.epochs`` is 200 by default, a bare ``TrainConfig`` has 10). Setting
``student.train.lr`` on a file without ``student:`` must keep those 200 epochs, so the path is
followed through the resolved values. For the same reason a mapping value is merged into the
section it names rather than replacing it.

Every mistake (no ``=``, a malformed value, an unknown key, an index out of range, a value the
schema refuses) is a :class:`~kd_ray.errors.ConfigError` whose one line names the ``--set``
argument and, for what the schema refuses, the field as the schema says it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from kd_ray.config import SweepConfig, load_config, parse_config
from kd_ray.errors import ConfigError

_KEY = re.compile(r"^[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*$")


@dataclass(frozen=True)
class Override:
    """One ``--set KEY=VALUE``: the dotted key, its parts, and the parsed value."""

    text: str  # as the user typed it, for messages
    key: str
    parts: tuple[str, ...]
    value: Any


def parse_override(text: str) -> Override:
    """``"grid.seeds=[0,1,2]"`` -> ``Override(key="grid.seeds", value=[0, 1, 2])``.

    Raises:
        ConfigError: no ``=``, a malformed key, or a value that is not YAML.
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. --set student.train.lr=0.05")
    if not _KEY.match(key):
        raise ConfigError(
            f"--set {text!r}: {key!r} is not a dotted key like student.train.lr or datasets.0.root"
        )
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or "invalid YAML"
        raise ConfigError(
            f"--set {key}: the value {raw!r} is not a YAML value ({problem}); quote the whole "
            "argument for the shell, e.g. --set 'grid.seeds=[0, 1, 2]'"
        ) from None
    return Override(text, key, tuple(key.split(".")), value)


def _merge(old: Any, new: Any) -> Any:
    """``new`` with the keys of mapping ``old`` it does not set kept (recursively)."""
    if isinstance(old, dict) and isinstance(new, dict):
        return {**old, **{k: _merge(old.get(k), v) for k, v in new.items()}}
    return new


def _apply(data: dict[str, Any], override: Override) -> None:
    """Set ``override``'s value in ``data`` (a resolved config dict), in place.

    Raises:
        ConfigError: the key indexes a list by a name or out of range, or goes through a value.
    """
    node: Any = data
    parts = override.parts
    for depth, part in enumerate(parts):
        where = ".".join(parts[:depth]) or "the config"
        last = depth == len(parts) - 1
        if isinstance(node, dict):
            # A key the dump lacks may still be one the schema takes (an unset optional section
            # is dumped as nothing): the schema judges it, and names an unknown one.
            if last:
                node[part] = _merge(node.get(part), override.value)
            else:
                node = node.setdefault(part, {})
        elif isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(
                    f"--set {override.key}: {where} is a list of {len(node)} item(s); "
                    f"index it by 0..{len(node) - 1}, e.g. {where}.0"
                )
            if last:
                node[int(part)] = _merge(node[int(part)], override.value)
            else:
                node = node[int(part)]
        else:
            raise ConfigError(f"--set {override.key}: {where} is a value ({node!r}), not a section")


def _resolved(cfg: SweepConfig) -> dict[str, Any]:
    """``cfg`` as plain data with every default filled in, credentials kept (the dump redacts
    them from ``results``; an override must not lose them)."""
    data = cfg.model_dump(mode="json")
    data["results"] = cfg.results
    return data


def _culprit(err: ValidationError, overrides: Sequence[Override]) -> str:
    """The ``--set`` arguments that the schema's first complaint is about (all, if unclear)."""
    loc = tuple(str(p) for p in err.errors()[0]["loc"])
    named = [o for o in overrides if loc[: len(o.parts)] == o.parts or (loc and o.parts[: len(loc)] == loc)]
    return " ".join(f"--set {o.text}" for o in (named or overrides))


def apply_overrides(cfg: SweepConfig, overrides: Sequence[str], source: str = "config") -> SweepConfig:
    """``cfg`` with ``overrides`` (``KEY=VALUE`` strings, in order) applied and validated.

    Raises:
        ConfigError: one line naming the dotted key and what is wrong with it.
    """
    if not overrides:
        return cfg
    parsed = [parse_override(text) for text in overrides]
    data = _resolved(cfg)
    for override in parsed:
        _apply(data, override)
    try:
        return SweepConfig.model_validate(data)
    except ValidationError as err:
        # parse_config words the complaint as it does for a file; the source names the --set.
        parse_config(data, source=f"{source} with {_culprit(err, parsed)}")
        raise  # not reached: parse_config raised ConfigError on the same data


def load_config_with_overrides(path: str | Path, overrides: Sequence[str] = ()) -> SweepConfig:
    """Read the sweep config at ``path`` and apply ``--set`` overrides (see the module docstring)."""
    return apply_overrides(load_config(path), overrides, source=str(path))
