"""The runs of a sweep and the groups they train in, from the config alone.

A *run* is one trained network: a point of the sweep (the values of its axes, e.g.
``{'depth': 8}``) and a seed; its folder holds its metrics. A *group* is the set of
runs that train together in one program (``ncjax.train``): members differ only in
numbers the program takes as inputs (seed, λ, learning rate, and depth when
packed), never in shapes. The plan is a pure function of the config, so a resumed
run, ``ncjax.evaluate`` and :func:`ncjax.checkpoints.load_params` all agree on it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections

from ncjax import train


@dataclasses.dataclass(frozen=True)
class Run:
    """One trained network: a point of the sweep and a seed."""

    point: tuple[tuple[str, Any], ...]  # (axis, value) pairs, e.g. (('depth', 8),)
    seed: int

    @property
    def values(self) -> dict[str, Any]:
        return dict(self.point)

    @property
    def depth(self) -> int:
        return self.values["depth"]

    @property
    def point_folder(self) -> str:
        return point_folder(self.point)

    @property
    def folder(self) -> str:
        """Relative to the workdir, e.g. ``depth_008/seed_0``."""
        return f"{self.point_folder}/seed_{self.seed}"

    def describe(self) -> str:
        return ", ".join(f"{k} {v}" for k, v in self.point) + f", seed {self.seed}"


@dataclasses.dataclass(frozen=True)
class Group:
    """Runs trained in one program; its checkpoints live in ``<workdir>/<name>/checkpoints``."""

    name: str
    runs: tuple[Run, ...]
    depth: int  # blocks in the program: the deepest member's depth

    def hyper(self, config: ml_collections.ConfigDict) -> train.Hyper:
        """Each member's seed, λ (after the depth schedule), learning rate and depth."""
        return train.Hyper.of(
            seeds=[r.seed for r in self.runs],
            l2s=[train.l2_coefficient(config.train, r.depth) for r in self.runs],
            learning_rates=[config.train.learning_rate for _ in self.runs],
            depths=[r.depth for r in self.runs])

    def model_config(self, config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
        model = ml_collections.ConfigDict(config.model.to_dict())
        model.depth = self.depth
        return model


def point_folder(point: tuple[tuple[str, Any], ...]) -> str:
    """A readable folder name for a point: ``depth_008``."""
    return "-".join(f"{key}_{value:03d}" if key == "depth" else f"{key}_{value}" for key, value in point)


def runs(config: ml_collections.ConfigDict) -> list[Run]:
    """Every run of the sweep, by point then seed."""
    return [Run((("depth", depth),), seed) for depth in config.depths for seed in config.seeds]


def groups(config: ml_collections.ConfigDict) -> list[Group]:
    """The groups of the sweep, in training order: one per depth, all seeds together."""
    out = []
    for depth in config.depths:
        members = tuple(r for r in runs(config) if r.depth == depth)
        out.append(Group(members[0].point_folder, members, depth))
    return out


def find(config: ml_collections.ConfigDict, folder: str) -> tuple[Group, int]:
    """The group that trains the run in ``folder`` and the run's index in it."""
    for group in groups(config):
        for index, run in enumerate(group.runs):
            if run.folder == folder:
                return group, index
    raise KeyError(folder)
