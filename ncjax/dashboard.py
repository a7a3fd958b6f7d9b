"""Dashboards for every run: TensorBoard always, Weights & Biases when ``config.dashboard.wandb`` is on.

TensorBoard, in the run's folder:

``<run>/tensorboard/train``: the train log's scalars (``train/<key>``), written during training.
``<run>/tensorboard/eval``: every metrics line's scalars (``eval/<key>``) and per-block values
(``blocks/<metric>/block_<l>``), plus the run's HParams (depth, seed, λ, learning rate, width,
data: runs sort and filter by them), written from the run's metrics.jsonl. Re-evaluation
rewrites that folder from the new metrics.jsonl, so the two never disagree.

Open it with ``tensorboard --logdir WORKDIR``. On an object store (``gs://``, where nothing can be
appended) each event file is kept in memory and uploaded whole at every flush, through
``etils.epath`` like every other workdir file (no google-cloud-storage client needed).

Weights & Biases (``pip install 'ncjax[wandb]'``, ``--config.dashboard.wandb=True``): one W&B run per
ncjax run (name ``<point>/seed_<n>``, group the workdir's name, config its HParams), the same
scalars under the same names: ``train/*`` against ``train/step``, ``eval/*`` and ``blocks/*``
against ``eval/step``, and the final paper metrics in the run's summary (``final/<metric>``).
A resumed run continues its W&B run (its id is derived from the workdir and the run folder).
Re-evaluation logs the rewritten metrics to a new W&B run of job type ``re-evaluation`` (W&B
cannot rewrite a run's history). ``WANDB_MODE=offline`` / ``WANDB_DIR`` work as usual.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import threading
from typing import Any, Sequence

from etils.epath import Path

from ncjax import records
from ncjax.errors import ConfigError

FOLDER = "tensorboard"
# The metrics the HParams table (and W&B's run summary) shows beside each run's values.
_HPARAM_METRICS = ("nc1_quotient", "nc2_etf_w", "nc3_cos", "train_accuracy", "test_accuracy", "train_loss")


# ------------------------------------------------------------------ TensorBoard on object stores


class _UploadWhole:
    """An event file on an object store: kept in memory, uploaded whole at every flush (no append there)."""

    def __init__(self, path: str):
        self.path, self._buffer, self._lock = Path(path), io.BytesIO(), threading.Lock()

    def write(self, data: bytes) -> None:
        with self._lock:
            self._buffer.write(data)

    def flush(self) -> None:
        with self._lock:
            content = self._buffer.getvalue()
        self.path.write_bytes(content)

    def close(self) -> None:
        self.flush()


class _ObjectStoreFiles:
    """tensorboardX's writer factory (``register_writer_factory``) for an object-store scheme."""

    def open(self, path: str) -> _UploadWhole:
        return _UploadWhole(path)

    def directory_check(self, path: str) -> None:
        pass  # object stores have no folders to create


def _writer(folder: Path):
    from tensorboardX import SummaryWriter
    from tensorboardX import record_writer

    if records.is_object_store(folder):  # replaces tensorboardX's own gs:// writer (google-cloud-storage)
        record_writer.register_writer_factory(str(folder).split(":", 1)[0], _ObjectStoreFiles())
    return SummaryWriter(str(folder))


# ------------------------------------------------------------------ Weights & Biases


def _settings(runs: Sequence[Path]) -> dict[str, Any]:
    """The workdir's ``dashboard`` settings (config.json beside the run folders ``<workdir>/<point>/seed_<n>``)."""
    if not runs:
        return {}
    workdir = Path(runs[0]).parent.parent
    return (records.read_config(workdir).get("dashboard") or {}) if (workdir / records.CONFIG).exists() else {}


def import_wandb():
    """The wandb module, or a ConfigError (exit status 2) saying how to install it."""
    try:
        import wandb
    except ImportError:
        raise ConfigError("dashboard.wandb=True needs Weights & Biases: pip install 'ncjax[wandb]' "
                          "(or --config.dashboard.wandb=False)") from None
    return wandb


def _workdir_id(run: Path) -> str:
    workdir = Path(run).parent.parent
    return str(workdir) if records.is_object_store(workdir) else os.path.realpath(os.fspath(workdir))


class _Wandb:
    """One W&B run of one ncjax run, shared by its train and eval writers (finished when both closed)."""

    _open: dict[str, "_Wandb"] = {}
    _guard = threading.Lock()

    def __init__(self, run: Path, hparams: dict[str, Any], settings: dict[str, Any], job_type: str):
        wandb = import_wandb()
        workdir = Path(run).parent.parent
        name = f"{Path(run).parent.name}/{Path(run).name}"
        identity = hashlib.sha1(f"{_workdir_id(run)}\n{name}".encode()).hexdigest()[:16]
        resume = job_type == "training"  # a resumed training run continues its W&B run
        self.run = wandb.init(
            project=settings.get("wandb_project") or "ncjax", entity=settings.get("wandb_entity") or None,
            group=workdir.name, name=name, job_type=job_type, config=_hparam_values(hparams),
            id=identity if resume else None, resume="allow" if resume else None, reinit="create_new")
        self.run.define_metric("train/step")
        self.run.define_metric("train/*", step_metric="train/step")
        self.run.define_metric("eval/step")
        for pattern in ("eval/*", "blocks/*"):
            self.run.define_metric(pattern, step_metric="eval/step")
        self.key, self.users = str(run) + "\n" + job_type, 0

    @classmethod
    def acquire(cls, run: Path, hparams: dict[str, Any] | None, settings: dict[str, Any],
                job_type: str = "training") -> "_Wandb":
        with cls._guard:
            key = str(run) + "\n" + job_type
            if key not in cls._open:
                cls._open[key] = cls(run, hparams or {}, settings, job_type)
            elif hparams:  # opened first by the train writer, which does not know them
                cls._open[key].run.config.update(_hparam_values(hparams), allow_val_change=True)
            handle = cls._open[key]
            handle.users += 1
            return handle

    def release(self) -> None:
        with self._guard:
            self.users -= 1
            if self.users > 0:
                return
            self._open.pop(self.key, None)
        self.run.finish()

    def log(self, values: dict[str, float], axis: str, step: int) -> None:
        if values:
            self.run.log(dict(values, **{axis: step}))

    def final(self, line: dict[str, Any]) -> None:
        for key, value in _final(line).items():
            self.run.summary[key] = value


class _TrainWriter:
    """What the train loop writes a run's scalars to (``add_scalar``, ``close``): TensorBoard, and W&B if on."""

    def __init__(self, run: Path, settings: dict[str, Any]):
        self.tensorboard = _writer(run / FOLDER / "train")
        self.wandb = _Wandb.acquire(run, None, settings) if settings.get("wandb") else None
        self._step, self._row = None, {}

    def add_scalar(self, tag: str, value, step: int) -> None:
        self.tensorboard.add_scalar(tag, value, step)
        if self.wandb is not None:
            if step != self._step:
                self._flush()
            self._step = step
            if _scalar(value):
                self._row[tag] = float(value)

    def _flush(self) -> None:
        if self.wandb is not None and self._row:
            self.wandb.log(self._row, "train/step", self._step)
        self._row = {}

    def close(self) -> None:
        self.tensorboard.close()
        if self.wandb is not None:
            self._flush()
            self.wandb.release()
            self.wandb = None


def train_writers(runs: Sequence[Path]) -> list[Any]:
    """One writer per run for the train log (none on hosts other than process 0)."""
    if not records.is_writer():
        return []
    settings = _settings(runs)
    return [_TrainWriter(Path(run), settings) for run in runs]


# ------------------------------------------------------------------ evaluations


def _scalar(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _scalars(line: dict[str, Any]) -> dict[str, float]:
    """Every dashboard scalar of one metrics line: ``eval/<key>`` and ``blocks/<metric>/block_<l>``."""
    out = {}
    for key, value in line.items():
        if key in ("step", "seed") or key.startswith("depth"):
            continue
        if _scalar(value):
            out[f"eval/{key}"] = float(value)
        elif key.endswith("_per_block") and isinstance(value, list):
            for block, v in enumerate(value, 1):
                if _scalar(v):
                    out[f"blocks/{key[:-len('_per_block')]}/block_{block:03d}"] = float(v)
    return out


def _hparam_values(hparams: dict[str, Any]) -> dict[str, Any]:
    return {key: value if isinstance(value, (int, float, str, bool)) else str(value) for key, value in hparams.items()}


def _final(line: dict[str, Any]) -> dict[str, float]:
    return {f"final/{k}": v for k, v in line.items() if k in _HPARAM_METRICS and _scalar(v)}


class _EvalWriter:
    def __init__(self, run: Path, hparams: dict[str, Any], settings: dict[str, Any], job_type: str):
        self.tensorboard = _writer(run / FOLDER / "eval")
        self.hparams = hparams
        self.wandb = _Wandb.acquire(run, hparams, settings, job_type) if settings.get("wandb") else None

    def line(self, line: dict[str, Any], last: bool) -> None:
        step, scalars = line["step"], _scalars(line)
        for tag, value in scalars.items():
            self.tensorboard.add_scalar(tag, value, step)
        if last:  # one row of TensorBoard's HParams table: the run's values and its final paper metrics
            self.tensorboard.add_hparams(_hparam_values(self.hparams), _final(line), name="hparams", global_step=step)
        if self.wandb is not None:
            self.wandb.log(scalars, "eval/step", step)
            if last:
                self.wandb.final(line)

    def close(self) -> None:
        self.tensorboard.close()
        if self.wandb is not None:
            self.wandb.release()
            self.wandb = None


class Evaluations:
    """The eval dashboards of a group's runs; ``hparams``: each run's defining values."""

    def __init__(self, runs: Sequence[Path], hparams: Sequence[dict[str, Any]]):
        self.runs, self.hparams = [Path(run) for run in runs], list(hparams)
        self._writers: list[_EvalWriter] | None = None

    def _open(self, job_type: str = "training") -> list[_EvalWriter]:
        if self._writers is None:
            settings = _settings(self.runs)
            self._writers = [_EvalWriter(run, hparams, settings, job_type)
                             for run, hparams in zip(self.runs, self.hparams)]
        return self._writers

    def add(self, lines: Sequence[dict[str, Any]], last: bool = False) -> None:
        """One new metrics line per run (training); ``last``: the run's final evaluation, which the HParams
        table shows beside the run's values."""
        if not records.is_writer():
            return
        for writer, line in zip(self._open(), lines):
            writer.line(line, last)

    def rewrite(self) -> None:
        """Every run's eval dashboard anew from its metrics.jsonl (re-evaluation)."""
        if not records.is_writer():
            return
        self.close()
        if _settings(self.runs).get("wandb"):
            import_wandb()  # before anything is removed: a missing wandb changes nothing
        for run in self.runs:
            folder = run / FOLDER / "eval"
            if folder.exists():
                folder.rmtree()
        for writer, run in zip(self._open(job_type="re-evaluation"), self.runs):
            lines = records.read_metrics(run)
            for i, line in enumerate(lines):
                writer.line(line, last=i == len(lines) - 1)
        self.close()

    def close(self) -> None:
        for writer in self._writers or []:
            writer.close()
        self._writers = None
