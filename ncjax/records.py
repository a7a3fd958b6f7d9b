"""The workdir contract on disk: config.json, run folders, metrics.jsonl and train_log.jsonl.

Every file the sweep, the trainer and ``ncjax.evaluate`` write goes through here
(checkpoints through ``ncjax.checkpoints``), so the layout of the README's workdir
section is stated once. Only process 0 writes (``jax.process_index() == 0``); the
others read. Paths are ``etils.epath`` paths, so a workdir may be local or ``gs://``.

Resuming compares only what defines the experiment (:data:`RUNTIME_KEYS` are the
settings that do not: rerunning with more devices or a bigger evaluation batch
resumes, and config.json then records the new runtime settings).
"""

from __future__ import annotations

import json
from typing import Any, Iterable

import jax
from etils.epath import Path

from ncjax.errors import WorkdirError

CONFIG = "config.json"
METRICS = "metrics.jsonl"
TRAIN_LOG = "train_log.jsonl"
# Config keys that change how a run is executed, never what it computes.
RUNTIME_KEYS = ("name", "mesh", "eval_batch_size", "log_every_steps", "progress", "steps_per_call", "checkpoint",
                "data.placement", "summary", "evaluate", "dashboard")


def is_writer() -> bool:
    return jax.process_index() == 0


def run_folders(workdir: Path | str) -> list[Path]:
    """Every run folder (``<point>/seed_<n>``) that holds metrics, sorted."""
    return sorted(p.parent for p in Path(workdir).glob(f"*/seed_*/{METRICS}"))


def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            out += _differences(a.get(key), b.get(key), f"{prefix}{key}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def _is_runtime(key: str) -> bool:
    return any(key == r or key.startswith(r + ".") for r in RUNTIME_KEYS)


def check_workdir(workdir: Path | str, config: dict[str, Any]) -> None:
    """Raise WorkdirError unless ``workdir`` is new or holds a run of the same experiment as ``config``
    (runtime settings may differ); writes nothing."""
    existing = Path(workdir)
    while not existing.exists() and existing.parent != existing:  # the nearest part of the path that exists
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise WorkdirError(f"--workdir={workdir}: {existing} is a file, not a folder; give a new or an existing "
                           "run folder")
    if (Path(workdir) / CONFIG).exists():
        changed = [key for key in _differences(read_config(workdir), _as_stored(config)) if not _is_runtime(key)]
        if changed:
            raise WorkdirError(
                f"workdir {workdir} holds a run of a different config (differs in: {', '.join(changed[:8])}); "
                "use another --workdir, or the same config to resume")
    elif any(p.is_dir() for p in Path(workdir).glob("*/seed_*")):
        raise WorkdirError(f"workdir {workdir} holds runs but no {CONFIG}; use another --workdir")


def _as_stored(config: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(config))  # tuples → lists, as stored


def claim_workdir(workdir: Path | str, config: dict[str, Any]) -> None:
    """Write config.json, or check that the workdir's config.json is the same experiment.

    A workdir that holds a run of a different experiment is refused (nothing is
    overwritten), so resuming can never mix two experiments.
    """
    check_workdir(workdir, config)
    path, config = Path(workdir) / CONFIG, _as_stored(config)
    if path.exists():
        if read_config(workdir) != config and is_writer():
            atomic_write(path, json.dumps(config, indent=2, sort_keys=True) + "\n")
        return
    if is_writer():
        Path(workdir).mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(config, indent=2, sort_keys=True) + "\n")


def read_config(workdir: Path | str) -> dict[str, Any]:
    path = Path(workdir) / CONFIG
    if not path.exists():
        raise WorkdirError(f"{path} does not exist: --workdir must be a folder written by `python -m ncjax.main`")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise WorkdirError(f"{path} is not valid JSON ({error}); fix or remove it, or use another --workdir") from None
    if not isinstance(config, dict):
        raise WorkdirError(f"{path} holds a JSON {type(config).__name__}, not a config; it was not written by "
                           "ncjax: fix or remove it, or use another --workdir")
    return config


def read_lines(path: Path) -> list[dict[str, Any]]:
    """JSON lines of ``path`` (none if absent), by step; later lines win; a line that is not JSON (torn by a
    kill) is skipped; JSON that is not a record is refused (WorkdirError, one line)."""
    if not path.exists():
        return []
    by_step = {}
    for number, line in enumerate(path.read_bytes().decode("utf-8", "replace").splitlines(), 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # the tail of a write cut by a kill (a resume recomputes what is lost)
            continue
        if not (isinstance(record, dict) and isinstance(record.get("step"), int)):
            raise WorkdirError(f"{path}, line {number}, is not an ncjax record (no integer 'step'): remove that "
                               "line, or the file to have it rebuilt from the checkpoints")
        by_step[record["step"]] = record
    return [by_step[s] for s in sorted(by_step)]


def read_metrics(run: Path | str) -> list[dict[str, Any]]:
    """The metrics lines of a run, one per evaluated step."""
    return read_lines(Path(run) / METRICS)


def write_metrics(run: Path | str, lines: Iterable[dict[str, Any]]) -> None:
    """The one writer of a run's metrics.jsonl (training, re-evaluation, the continual runner): ``lines``
    replace the lines at their steps, every other line is kept; the file is replaced atomically."""
    lines = list(lines)
    steps = {line["step"] for line in lines}
    _write_lines(Path(run) / METRICS, [r for r in read_metrics(run) if r["step"] not in steps] + lines)


def read_train_log(run: Path | str) -> list[dict[str, Any]]:
    """The training log of a run: loss, its parts and the gradient norm every ``log_every_steps``."""
    return read_lines(Path(run) / TRAIN_LOG)


def append_train_log(run: Path | str, records: Iterable[dict[str, Any]]) -> None:
    """Append lines to train_log.jsonl (a kill may tear the last one: readers skip it); on an object store,
    which cannot append, the file is read and replaced whole (one upload)."""
    lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
    if not (is_writer() and lines):
        return
    path = Path(run) / TRAIN_LOG
    if is_object_store(path):  # gs:// and friends cannot append: the file is replaced whole
        atomic_write(path, (path.read_text() if path.exists() else "") + lines)
    else:
        with path.open("a") as f:
            f.write(lines)


def is_object_store(path: Path | str) -> bool:
    """Whether ``path`` lives on an object store (``gs://``, ``s3://``, ...): no append, no in-place rewrite,
    no atomic rename; every file ncjax writes there is uploaded whole."""
    return "://" in str(path)


def truncate(run: Path | str, step: int) -> None:
    """Drop every metrics and train-log line past ``step`` (a resume recomputes them identically)."""
    for name in (METRICS, TRAIN_LOG):
        path = Path(run) / name
        lines = read_lines(path)
        if path.exists() and (any(r["step"] > step for r in lines) or len(lines) != _line_count(path)):
            _write_lines(path, [r for r in lines if r["step"] <= step])


def _line_count(path: Path) -> int:
    return sum(1 for line in path.read_text().splitlines() if line.strip())


def _write_lines(path: Path, records: Iterable[dict[str, Any]]) -> None:
    if is_writer():
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = [json.dumps(r, sort_keys=True) for r in sorted(records, key=lambda r: r["step"])]
        atomic_write(path, "".join(line + "\n" for line in lines))


def atomic_write(path: Path, content: str | bytes) -> None:
    """Replace ``path`` by ``content``: a reader or a kill sees the old file or the new one.

    Locally: a temporary file, then one rename. On an object store: one upload (an object appears or is
    replaced whole when its upload completes; a rename there is a copy and a delete, not atomic)."""
    data = content if isinstance(content, bytes) else content.encode()
    if is_object_store(path):
        Path(path).write_bytes(data)
        return
    tmp = Path(path).parent / (Path(path).name + ".tmp")
    try:
        tmp.write_bytes(data)
        tmp.replace(path)
    except BaseException:
        if tmp.exists():
            tmp.unlink()
        raise
