"""TensorBoard for every run: training scalars as they come, evaluations as metrics.jsonl has them.

``<run>/tensorboard/train``: the train log's scalars and steps/s, appended during training.
``<run>/tensorboard/eval``: every metrics line's scalars (``eval/<key>``) and per-block values
(``blocks/<metric>/block_<l>``), plus the run's HParams (depth, seed, λ, learning rate, width,
data: runs sort and filter by them), written from the run's metrics.jsonl. Re-evaluation
rewrites that folder from the new metrics.jsonl, so the two never disagree.

Open it with ``tensorboard --logdir WORKDIR``.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from etils.epath import Path

from ncjax import records

FOLDER = "tensorboard"


def _writer(folder: Path):
    from tensorboardX import SummaryWriter

    return SummaryWriter(str(folder))


def train_writers(runs: Sequence[Path]) -> list[Any]:
    """One writer per run for the train log (none on hosts other than process 0)."""
    return [_writer(run / FOLDER / "train") for run in runs] if records.is_writer() else []


def _scalar(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _write_line(writer, line: dict[str, Any]) -> None:
    step = line["step"]
    for key, value in line.items():
        if key in ("step", "seed") or key.startswith("depth"):
            continue
        if _scalar(value):
            writer.add_scalar(f"eval/{key}", value, step)
        elif key.endswith("_per_block") and isinstance(value, list):
            for block, v in enumerate(value, 1):
                if _scalar(v):
                    writer.add_scalar(f"blocks/{key[:-len('_per_block')]}/block_{block:03d}", v, step)


def _add_hparams(writer, hparams: dict[str, Any], line: dict[str, Any]) -> None:
    """The run's values and its final paper metrics, as one row of TensorBoard's HParams table."""
    values = {key: (value if isinstance(value, (int, float, str, bool)) else str(value))
              for key, value in hparams.items()}
    final = {f"final/{k}": v for k, v in line.items() if k in _HPARAM_METRICS and _scalar(v)}
    writer.add_hparams(values, final, name="hparams", global_step=line["step"])


class Evaluations:
    """The eval dashboards of a group's runs; ``hparams``: each run's defining values."""

    def __init__(self, runs: Sequence[Path], hparams: Sequence[dict[str, Any]]):
        self.runs, self.hparams = list(runs), list(hparams)
        self._writers: list[Any] | None = None

    def _open(self) -> list[Any]:
        if self._writers is None:
            self._writers = [_writer(run / FOLDER / "eval") for run in self.runs]
        return self._writers

    def add(self, lines: Sequence[dict[str, Any]], last: bool = False) -> None:
        """One new metrics line per run (training); ``last``: the run's final evaluation, which the HParams
        table shows beside the run's values."""
        if not records.is_writer():
            return
        for writer, line, hparams in zip(self._open(), lines, self.hparams):
            _write_line(writer, line)
            if last:
                _add_hparams(writer, hparams, line)

    def rewrite(self) -> None:
        """Every run's eval dashboard anew from its metrics.jsonl (re-evaluation)."""
        if not records.is_writer():
            return
        self.close()
        for run in self.runs:
            folder = run / FOLDER / "eval"
            if folder.exists():
                folder.rmtree()
        for writer, run, hparams in zip(self._open(), self.runs, self.hparams):
            lines = records.read_metrics(run)
            for line in lines:
                _write_line(writer, line)
            if lines:
                _add_hparams(writer, hparams, lines[-1])
        self.close()

    def close(self) -> None:
        for writer in self._writers or []:
            writer.close()
        self._writers = None


# The metrics the HParams table shows beside each run's values.
_HPARAM_METRICS = ("nc1_quotient", "nc2_etf_w", "nc3_cos", "train_accuracy", "test_accuracy", "train_loss")
