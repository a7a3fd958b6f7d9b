"""The runs of a sweep and the groups they train in, from the config alone.

A sweep is a grid: ``config.depths`` (the depth axis) times every axis of
``config.sweep`` (pairs of a config key and its values, e.g.
``(('train.l2', (5e-3, 5e-4)),)``), times ``config.seeds``. A *run* is one trained
network: a point of the grid and a seed; its folder (``depth_008-l2_0.005/seed_0``)
holds its metrics. A *group* is the set of runs that train together in one program
(``ncjax.train``): members differ only in numbers the program takes as inputs
(:func:`member_keys`: seed, λ, learning rate, the number that generates the data, e.g. a
mixture's SNR, and depth when packed), never in shapes or code. The plan is a pure function
of the config (it imports no training code), so a resumed run, ``ncjax.evaluate`` and
:func:`ncjax.checkpoints.load_params` all agree on it.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import itertools
import re
from typing import Any

import ml_collections

from ncjax import data
from ncjax.errors import ConfigError

# Swept keys that members of one group may differ in: they enter the program as numbers (train.Hyper).
MEMBER_KEYS = ("train.l2", "train.learning_rate")
DEPTH = "depth"


def member_keys(source: str) -> tuple[str, ...]:
    """:data:`MEMBER_KEYS` and the generating number of data source ``source`` (``data.value_key``), if any."""
    return MEMBER_KEYS + tuple(filter(None, [data.value_key(source)]))


@dataclasses.dataclass(frozen=True)
class Run:
    """One trained network: a point of the sweep and a seed."""

    point: tuple[tuple[str, Any], ...]  # (axis, value) pairs, depth first, e.g. (('depth', 8), ('train.l2', 5e-3))
    seed: int
    folder_names: tuple[tuple[str, str], ...] = ()  # axis → the short name it has in folder names

    @property
    def values(self) -> dict[str, Any]:
        return dict(self.point)

    @property
    def depth(self) -> int:
        return self.values[DEPTH]

    @property
    def point_folder(self) -> str:
        return point_folder(self.point, dict(self.folder_names))

    @property
    def folder(self) -> str:
        """Relative to the workdir, e.g. ``depth_008/seed_0``."""
        return f"{self.point_folder}/seed_{self.seed}"

    def describe(self) -> str:
        return ", ".join(f"{k} {v}" for k, v in self.point) + f", seed {self.seed}"

    def config(self, base: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
        """The config of this run alone: ``base`` with the point's values set (depth into model.depth)."""
        return apply(base, self.point)


@dataclasses.dataclass(frozen=True)
class Group:
    """Runs trained in one program; its checkpoints live in ``<workdir>/<name>/checkpoints``."""

    name: str
    runs: tuple[Run, ...]
    shared: tuple[tuple[str, Any], ...]  # the point values every member has in common (set in the program)
    data_key: str | None = None  # the swept key that generates the members' data (each composes its own)

    @property
    def depth(self) -> int:
        """Blocks in the program: the deepest member's depth."""
        return max(r.depth for r in self.runs)

    @property
    def packed(self) -> bool:
        """Whether members differ in depth (blocks beyond a member's depth are masked)."""
        return len({r.depth for r in self.runs}) > 1

    def config(self, base: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
        """The program's config: ``base`` with the shared values, and the deepest member's depth."""
        return apply(base, self.shared + ((DEPTH, self.depth),))

    def data_values(self) -> tuple | None:
        """Each member's value of :attr:`data_key` (the data is made for all of them at once), or None."""
        return None if self.data_key is None else tuple(r.values[self.data_key] for r in self.runs)


def apply(base: ml_collections.ConfigDict, point) -> ml_collections.ConfigDict:
    """A copy of ``base`` with every (key, value) of ``point`` set; ``depth`` sets ``model.depth``."""
    config = ml_collections.ConfigDict(base.to_dict())
    config.update_from_flattened_dict({("model.depth" if key == DEPTH else key): value for key, value in point})
    return config


def axes(config: ml_collections.ConfigDict) -> list[tuple[str, tuple]]:
    """The sweep's axes in order: depth first, then ``config.sweep``'s."""
    return [(DEPTH, tuple(config.depths))] + [(key, tuple(values)) for key, values in config.sweep]


def validate(config: ml_collections.ConfigDict) -> None:
    """Raise ConfigError for a sweep axis that is not a config value, repeats one, or has no values."""
    seen = {DEPTH}
    for entry in config.sweep:
        if not (isinstance(entry, (tuple, list)) and len(entry) == 2 and isinstance(entry[0], str)
                and isinstance(entry[1], (tuple, list)) and len(entry[1]) > 0):
            raise ConfigError(f"sweep entry {entry!r}: give (key, (value, ...)) pairs, e.g. "
                              "--config.sweep=\"(('train.l2', (5e-3, 5e-4)),)\"")
        key, values = entry
        if key in ("depth", "model.depth", "seeds"):
            raise ConfigError(f"sweep axis {key!r}: depths and seeds have their own keys, --config.depths and "
                              "--config.seeds")
        if key in seen:
            raise ConfigError(f"sweep axis {key!r} is given twice")
        seen.add(key)
        node = config
        for name in key.split("."):
            if not hasattr(node, "keys") or name not in node:
                raise ConfigError(f"sweep axis {key!r} is not a config value (no {name!r} in "
                                  f"{', '.join(sorted(node.keys())) if hasattr(node, 'keys') else 'a value'})")
            node = node[name]
        if hasattr(node, "keys"):
            raise ConfigError(f"sweep axis {key!r} names a section of the config, not a value")
        if len(set(map(repr, values))) != len(values):
            raise ConfigError(f"sweep axis {key!r} repeats a value: {tuple(values)}")
        for value in values:
            try:  # on a copy that keeps the fields' types (an unset field's too)
                copy.deepcopy(config).update_from_flattened_dict({key: value})
            except TypeError:
                parent = functools.reduce(lambda n, name: n[name], key.split(".")[:-1], config)
                raise ConfigError(f"sweep axis {key!r}: {value!r} is not of type "
                                  f"{parent.get_type(key.split('.')[-1]).__name__}, the type of this setting") from None


def _short_names(keys: list[str]) -> dict[str, str]:
    """Folder names use a key's last part ('l2' for 'train.l2') unless two keys share it."""
    last = [k.split(".")[-1] for k in keys]
    return {k: (short if last.count(short) == 1 else k) for k, short in zip(keys, last)}


def _format(value: Any) -> str:
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return re.sub(r"[^A-Za-z0-9.+=-]", "_", text)


def point_folder(point, short: dict[str, str] | None = None) -> str:
    """A readable folder name for a point: ``depth_008``, ``depth_008-l2_0.005``."""
    short = short or {}
    return "-".join(f"{DEPTH}_{value:03d}" if key == DEPTH else f"{short.get(key, key)}_{_format(value)}"
                    for key, value in point)


def runs(config: ml_collections.ConfigDict) -> list[Run]:
    """Every run of the sweep: the grid's points in order (last axis fastest), each with every seed."""
    grid = axes(config)
    names = tuple(_short_names([k for k, _ in grid]).items())
    return [Run(tuple(zip([k for k, _ in grid], values)), seed, names)
            for values in itertools.product(*(v for _, v in grid)) for seed in config.seeds]


def _source(config: ml_collections.ConfigDict, run: Run) -> str:
    return run.values.get("data.source", config.data.source)


def groups(config: ml_collections.ConfigDict) -> list[Group]:
    """The groups of the sweep, in training order.

    Runs that differ only in seeds and :func:`member_keys` (and depth, when ``config.pack`` is True:
    the whole panel in one program) share a group; ``config.max_members`` splits a larger one into
    consecutive parts (``depth_008-part_0``, ...) of at most that many runs, for memory.
    """
    packed = {DEPTH} if config.get("pack") is True else set()
    swept = {key for key, _ in config.sweep}
    by_key: dict[tuple, list[Run]] = {}
    for run in runs(config):  # member keys per run: the data's generating number depends on its source
        vmapped = set(member_keys(_source(config, run))) | packed
        by_key.setdefault(tuple((k, v) for k, v in run.point if k not in vmapped), []).append(run)
    out = []
    for shared, members in by_key.items():
        limit = config.get("max_members") or len(members)
        name = point_folder(shared, dict(members[0].folder_names)) or "packed"
        data_key = data.value_key(_source(config, members[0]))
        data_key = data_key if data_key in swept else None
        parts = [tuple(members[i:i + limit]) for i in range(0, len(members), limit)]
        out += [Group(name if len(parts) == 1 else f"{name}-part_{i}", part, shared, data_key)
                for i, part in enumerate(parts)]
    return out
