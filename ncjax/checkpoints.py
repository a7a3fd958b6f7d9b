"""Orbax checkpoints of one run (one depth, one seed): train state plus data position.

Each run folder gets its own ``CheckpointManager`` (async saves, ``max_to_keep``),
so ``python -m ncjax.evaluate`` and users read a run without knowing how many
seeds were trained beside it. The data position (epoch, batch within the epoch)
is saved next to the state, so a resumed run continues the exact data order.
"""

from __future__ import annotations

from typing import Any

import orbax.checkpoint as ocp
from etils.epath import Path

from ncjax.errors import CheckpointError


class RunCheckpoints:
    """The checkpoints of one run folder."""

    def __init__(self, run_dir: Path | str, max_to_keep: int | None = None):
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, enable_async_checkpointing=True)
        self.directory = Path(run_dir) / "checkpoints"
        self._manager = ocp.CheckpointManager(self.directory.absolute(), options=options)

    def steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state: Any, position: dict[str, int]) -> None:
        """Start an async save of ``state`` (its arrays are copied first) at ``step``."""
        self._manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(position)),
            force=True,
        )

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict[str, int]]:
        """The state (laid out as ``abstract_state``'s shardings) and data position at ``step``."""
        try:
            restored = self._manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()
                ),
            )
        except Exception as error:  # Orbax raises many types for unreadable files
            reason = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
            raise CheckpointError(
                f"checkpoint {self.directory / str(step)} cannot be read ({type(error).__name__}: {reason}); "
                "it is left untouched: move that step folder aside to resume from the one before"
            ) from None
        return restored["state"], dict(restored["data"])

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def reached_preemption(self, step: int) -> bool:
        """Orbax's multi-host-consistent preemption check (all hosts agree on the step)."""
        return self._manager.reached_preemption(step)

    def close(self) -> None:
        self._manager.close()
