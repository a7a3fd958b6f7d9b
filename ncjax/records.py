"""The workdir contract on disk: config.json, run folders, metrics.jsonl.

Every file the sweep, the trainer and ``ncjax.evaluate`` write goes through
here, so the layout of ``shared/docs/design.md`` is stated once. Only process 0
writes (``jax.process_index() == 0``); the others read. Paths are ``etils.epath``
paths, so a workdir may be local or ``gs://`` (as Orbax's checkpoints are).
"""

from __future__ import annotations

import json
import re
from typing import Any, Iterable

import jax
from etils.epath import Path

from ncjax.errors import WorkdirError

RUN_PATTERN = re.compile(r"depth_(\d+)/seed_(\d+)$")


def is_writer() -> bool:
    return jax.process_index() == 0


def run_dir(workdir: Path | str, depth: int, seed: int) -> Path:
    return Path(workdir) / f"depth_{depth:03d}" / f"seed_{seed}"


def runs(workdir: Path | str) -> list[tuple[int, int, Path]]:
    """(depth, seed, folder) of every run folder in ``workdir``, by depth then seed."""
    found = []
    for path in Path(workdir).glob("depth_*/seed_*"):
        match = RUN_PATTERN.search(path.as_posix())
        if match and path.is_dir():
            found.append((int(match.group(1)), int(match.group(2)), path))
    return sorted(found)


def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            out += _differences(a.get(key), b.get(key), f"{prefix}{key}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def claim_workdir(workdir: Path | str, config: dict[str, Any]) -> None:
    """Write config.json, or check that the workdir's config.json is this config.

    A workdir that holds a run of a different config is refused (nothing is
    overwritten), so resuming can never mix two experiments.
    """
    if Path(workdir).exists() and not Path(workdir).is_dir():
        raise WorkdirError(f"--workdir={workdir} is a file, not a folder; give a new or an existing run folder")
    path = Path(workdir) / "config.json"
    config = json.loads(json.dumps(config))  # tuples → lists, as stored
    if path.exists():
        try:
            stored = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise WorkdirError(f"{path} is not valid JSON ({error}); fix or remove it, or use another --workdir")
        changed = _differences(stored, config)
        if changed:
            raise WorkdirError(
                f"workdir {workdir} holds a run of a different config (differs in: {', '.join(changed[:8])}); "
                "use another --workdir, or the same config to resume"
            )
        return
    if any(Path(workdir).glob("depth_*")):
        raise WorkdirError(f"workdir {workdir} holds runs but no config.json; use another --workdir")
    if is_writer():
        Path(workdir).mkdir(parents=True, exist_ok=True)
        _atomic_write(path, json.dumps(config, indent=2, sort_keys=True) + "\n")


def read_config(workdir: Path | str) -> dict[str, Any]:
    path = Path(workdir) / "config.json"
    if not path.exists():
        raise WorkdirError(f"{path} does not exist: --workdir must be a folder written by `python -m ncjax.main`")
    return json.loads(path.read_text())


def read_metrics(run: Path) -> list[dict[str, Any]]:
    """The metrics lines of a run, one per evaluated step (later lines win)."""
    path = Path(run) / "metrics.jsonl"
    if not path.exists():
        return []
    by_step = {}
    for line in path.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            by_step[record["step"]] = record
    return [by_step[s] for s in sorted(by_step)]


def write_metrics(run: Path, records: Iterable[dict[str, Any]]) -> None:
    """Replace metrics.jsonl with ``records`` (sorted by step), atomically."""
    if is_writer():
        lines = [json.dumps(r, sort_keys=True) for r in sorted(records, key=lambda r: r["step"])]
        _atomic_write(Path(run) / "metrics.jsonl", "".join(line + "\n" for line in lines))


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.parent / (path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
