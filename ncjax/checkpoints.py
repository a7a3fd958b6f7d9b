"""Orbax checkpoints of a group of runs (all members in one atomic step), and loading one run back.

Every member of a group (the seeds of a depth, or a packed panel) is saved in one
Orbax step: a kill at any instant leaves either the whole step or none of it
(Orbax writes a temporary folder and renames it when complete), so a resumed group
can never mix members of different steps. A step holds three items:

- ``params`` and ``opt_state``: the stacked state, every leaf with a leading member axis;
- ``meta`` (JSON): the step, the data position (epoch, batch within it, steps per epoch,
  training-set size: resume reads it and refuses data that changed), each member's
  ``diverged_at`` and the members themselves (run folder, depth, seed, point), so the
  checkpoint describes itself.

Old steps beyond ``max_to_keep`` are renamed into ``checkpoints/.deleted`` by Orbax
(atomic) and removed from there at the next save, so a kill mid-deletion never leaves a
half-deleted step that looks complete.

Users load one run's parameters with :func:`load_params`.
"""

from __future__ import annotations

import json
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils.epath import Path

from ncjax.errors import CheckpointError, WorkdirError

CHECKPOINTS = "checkpoints"
_TRASH = ".deleted"


class GroupCheckpoints:
    """The checkpoints of one group, in ``<group folder>/checkpoints``."""

    def __init__(self, group_dir: Path | str, max_to_keep: int | None = None, read_only: bool = False):
        """``read_only``: for readers beside a possibly running trainer (no clean-up, no folder creation)."""
        self.directory = Path(group_dir) / CHECKPOINTS
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, enable_async_checkpointing=not read_only, cleanup_tmp_directories=not read_only,
            todelete_subdir=_TRASH, read_only=read_only, create=not read_only)
        self._manager = ocp.CheckpointManager(self.directory.absolute(), options=options)

    def steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, params: Any, opt_state: Any, meta: dict[str, Any]) -> None:
        """Start an async save of step ``step`` (the arrays are copied before this returns)."""
        if step in self._manager.all_steps():  # a step is a deterministic function of its number
            return
        self._empty_trash()
        self._manager.save(step, args=ocp.args.Composite(
            params=ocp.args.StandardSave(params), opt_state=ocp.args.StandardSave(opt_state),
            meta=ocp.args.JsonSave(meta)), force=True)

    def restore(self, step: int, abstract_params: Any, abstract_opt_state: Any) -> tuple[Any, Any, dict]:
        """(params, opt_state, meta) of ``step``, laid out as the abstract trees' shardings."""
        return self._read(step, params=ocp.args.StandardRestore(abstract_params),
                          opt_state=ocp.args.StandardRestore(abstract_opt_state), meta=ocp.args.JsonRestore())

    def check_meta(self, step: int, meta: dict[str, Any], expected: dict[str, Any], keys) -> None:
        """Refuse a checkpoint written for another experiment: ``meta[key]`` must equal ``expected[key]``
        as JSON stores it (tuples come back as lists)."""
        expected = json.loads(json.dumps({key: expected[key] for key in keys}))
        for key in keys:
            if meta.get(key) != expected[key]:
                raise WorkdirError(f"checkpoint {self.directory / str(step)} was written for other "
                                   f"{key.replace('_', ' ')} ({meta.get(key)}; here: {expected[key]}); "
                                   "use another --workdir")

    def restore_params(self, step: int) -> tuple[Any, dict]:
        """(params, meta) of ``step`` without knowing the model: arrays as saved."""
        restored = self._read(step, params=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore())
        return restored[0], restored[-1]

    def _read(self, step: int, **items) -> tuple:
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        except OSError:  # the file system, not the checkpoint: keep the traceback, a retry may work
            raise
        except Exception as error:  # Orbax raises many types for unreadable or foreign files
            reason = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
            raise CheckpointError(
                f"checkpoint {self.directory / str(step)} cannot be read ({type(error).__name__}: {reason}); "
                "it is left untouched: move that step folder aside to resume from the one before") from None
        return tuple(restored[name] for name in items)

    def _empty_trash(self) -> None:
        trash = self.directory / _TRASH
        if jax.process_index() == 0 and trash.exists():
            for old in trash.iterdir():
                old.rmtree()

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def reached_preemption(self, step: int) -> bool:
        """Orbax's multi-host-consistent preemption check (all hosts agree on the step)."""
        return self._manager.reached_preemption(step)

    def close(self) -> None:
        self._manager.close()


def load_params(workdir: Path | str, depth: int, seed: int, step: int | None = None,
                **point: Any) -> dict[str, Any]:
    """One run's parameters as numpy arrays (the model's params tree), from its group's checkpoint.

    ``depth`` and ``seed`` name the run; ``point`` gives the other swept values of a sweep
    over more axes (e.g. ``**{'train.l2': 5e-4}``). ``step=None``: the latest checkpoint.
    A packed run's stack holds ``max(depths)`` blocks; only the first ``depth`` are its own.
    """
    wanted = dict(point, depth=depth)
    for group_dir in sorted(Path(workdir).glob(f"*/{CHECKPOINTS}")):
        checkpoints = GroupCheckpoints(group_dir.parent, read_only=True)
        try:
            steps = checkpoints.steps()
            if not steps:
                continue
            chosen = steps[-1] if step is None else step
            if chosen not in steps:
                continue
            meta = checkpoints._read(chosen, meta=ocp.args.JsonRestore())[0]
            index = next((i for i, m in enumerate(meta["members"])
                          if m["seed"] == seed and all(m["point"].get(k) == v for k, v in wanted.items())), None)
            if index is None:
                continue
            params, _ = checkpoints.restore_params(chosen)
            return jax.tree.map(lambda a: np.asarray(a)[index], params)
        finally:
            checkpoints.close()
    where = f"step {step}" if step is not None else "any step"
    raise WorkdirError(f"{workdir} has no checkpoint ({where}) of the run depth={depth}, seed={seed}"
                       + (f", {point}" if point else ""))
