"""Orbax checkpoints of a group of runs (all members in one atomic step), verified on every read,
and loading one run back.

Every member of a group (the seeds of a depth, or a packed panel) is saved in one
Orbax step: a kill at any instant leaves either the whole step or none of it
(Orbax writes a temporary folder and renames it when complete), so a resumed group
can never mix members of different steps. A step holds three items:

- ``params`` and ``opt_state``: the stacked state, every leaf with a leading member axis;
- ``meta`` (JSON): the step, the data position (epoch, batch within it, steps per epoch,
  training-set size: resume reads it and refuses data that changed), each member's
  ``diverged_at`` and the members themselves (run folder, depth, seed, point), so the
  checkpoint describes itself; and ``digests``, written by :meth:`GroupCheckpoints.save`.

**Integrity.** ``meta["digests"]`` holds a CRC-32 of the bytes of every saved leaf of
``params`` and ``opt_state`` (with its dtype and shape) and one of the rest of ``meta``
itself, computed on the host from the arrays being saved, before :meth:`~GroupCheckpoints.save`
returns. They are written inside the same atomic step, so a step and its digests cannot
part. Every read (:meth:`~GroupCheckpoints.restore`, :meth:`~GroupCheckpoints.restore_params`,
:func:`load_params`) recomputes them and raises :class:`~ncjax.errors.CheckpointError`, one
line naming the step folder and the first leaf that differs, on a mismatch: a flipped bit in
a parameter file is never restored silently (TensorStore's own checks cover its index and
metadata files, not the chunk bytes). :meth:`~GroupCheckpoints.restore_latest` falls back to
the newest intact step with a warning. A step written by an older ncjax has no digests: it
is restored as before, unchecked. CRC-32 detects every error burst of up to 32 bits and
misses a random corruption with probability 2**-32 per leaf; it is not a defence against
deliberate tampering.

**Errors in plain words.** A step that cannot be read raises ``CheckpointError`` saying which
item (and leaf, where known) and what is wrong, never TensorStore's raw message. An operating-
system failure of a save (a full disk, a read-only file system, a quota) raises one
``OSError`` with the cause (``[Errno 28] no space left on device: '<checkpoints folder>'``),
the exit-status-1 kind of error, from :meth:`~GroupCheckpoints.save`, :meth:`~GroupCheckpoints.wait`
or :meth:`~GroupCheckpoints.close`, whichever first sees it, once: Orbax's background threads'
own error logs (a traceback each) are not printed.

Old steps beyond ``max_to_keep`` are renamed into ``checkpoints/.deleted`` by Orbax
(atomic) and removed from there at the next save, so a kill mid-deletion never leaves a
half-deleted step that looks complete.

Users load one run's parameters with :func:`load_params`; reading prints no Orbax warnings.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno as errno_lib
import json
import logging
import os
import re
import sys
import threading
import zlib
from typing import Any, Iterator

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils.epath import Path

from ncjax.errors import CheckpointError, WorkdirError

CHECKPOINTS = "checkpoints"
DIGESTS = "digests"  # the key of meta that save() fills (reserved)
_TRASH = ".deleted"
_ALGORITHM = "crc32"


class CheckpointDamaged(CheckpointError):
    """A step that fails its integrity check or cannot be read; ``reason`` says why in a few plain words."""

    def __init__(self, path: Path | str, reason: str, verb: str = "failed its integrity check"):
        self.path, self.reason, self.verb = str(path), reason, verb
        super().__init__(f"checkpoint {path} {verb} ({reason}); it is left untouched: move that step folder "
                         "aside to resume from the one before")


# ------------------------------------------------------------------ digests


def _leaf_name(path: tuple) -> str:
    """``blocks/Dense_0/kernel``, ``0/mu/head/bias``: the same for a namedtuple saved and the dict restored."""
    parts = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


def _start_transfer(leaf: Any) -> None:
    """Start the device-to-host copy of a leaf this process holds entirely (GPU/TPU: all transfers overlap)."""
    if isinstance(leaf, jax.Array) and leaf.is_fully_addressable and hasattr(leaf, "copy_to_host_async"):
        try:
            leaf.copy_to_host_async()
        except Exception:  # noqa: BLE001 (an optimisation only)
            pass


def _gather(leaf: Any) -> Any:
    """A leaf this process does not hold entirely (sharded over the processes of a multi-host run) is gathered
    from all of them: a collective every process calls in the same order (save and restore are collective)."""
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable and not leaf.is_fully_replicated:
        from jax.experimental import multihost_utils
        return np.asarray(multihost_utils.process_allgather(leaf, tiled=True))
    return leaf


def _host(leaf: Any) -> np.ndarray:
    """The leaf on the host; on CPU a view of the device buffer (no copy), dropped before save returns, so a
    donation afterwards is untouched."""
    if isinstance(leaf, jax.Array):
        leaf = leaf if leaf.is_fully_addressable else leaf.addressable_data(0)  # fully replicated here
    return np.asarray(leaf)


def _digest_bytes(array: np.ndarray) -> str:
    """The digest of the array's bytes in C order (any dtype: bfloat16, bool, ...)."""
    data = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
    return f"{_ALGORITHM}:{zlib.crc32(data):08x}"  # zlib releases the GIL: leaves hash in parallel


def _leaf_digest(leaf: Any) -> dict[str, Any]:
    array = _host(leaf)
    return dict(dtype=array.dtype.name, shape=list(array.shape), digest=_digest_bytes(array))


_POOL: concurrent.futures.ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _pool() -> concurrent.futures.ThreadPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = concurrent.futures.ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1),
                                                          thread_name_prefix="ncjax-digest")
        return _POOL


def tree_digests(tree: Any) -> dict[str, dict[str, Any]]:
    """``{leaf name: {dtype, shape, digest}}`` of every leaf of ``tree`` (jax or numpy arrays, any sharding),
    computed now on the host, the leaves in parallel threads."""
    named = [(_leaf_name(path), leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(tree)]
    named = [(name, _gather(leaf)) for name, leaf in named]
    for _, leaf in named:
        _start_transfer(leaf)
    digests = _pool().map(_leaf_digest, [leaf for _, leaf in named])
    return {name: digest for (name, _), digest in zip(named, digests)}


def _on_host(tree: Any) -> Any:
    """In a single process, ``tree``'s arrays as numpy arrays, in one transfer: Orbax saves them with its
    numpy handler, the same files for a restore at two thirds of the CPU of its ``jax.Array`` path (replica
    slices and sharding files per leaf: 95 against 150 ms for a 331 kB state), which ten saves in a
    second of training notice. On a CPU they are views that jax keeps valid: a buffer viewed from the
    host is copied, not donated, by the next step. Across processes the leaves stay ``jax.Array``:
    each host writes its own shards."""
    return tree if jax.process_count() > 1 else jax.device_get(tree)


def _canonical(value: Any) -> bytes:
    return json.dumps(json.loads(json.dumps(value)), sort_keys=True, separators=(",", ":")).encode()


def _meta_digest(meta: dict[str, Any]) -> str:
    """The digest of ``meta`` as JSON stores it, without ``digests["meta"]`` itself."""
    digests = {key: value for key, value in meta[DIGESTS].items() if key != "meta"}
    return f"{_ALGORITHM}:{zlib.crc32(_canonical(dict(meta, **{DIGESTS: digests}))):08x}"


def _unverifiable(digest: str) -> bool:
    return not isinstance(digest, str) or not digest.startswith(f"{_ALGORITHM}:")


# ------------------------------------------------------------------ Orbax's noise

_ORBAX_DIR = os.path.dirname(ocp.__file__)


_TENSORSTORE_ERROR = re.compile(r"[A-Z_]{5,}: |.*tensorstore", re.S)  # "DATA_LOSS: Error reading ..."


class _Quiet(logging.Filter):
    """Drops what Orbax and TensorStore print around a failure that :class:`GroupCheckpoints` reports itself in
    one line (or one OSError): background threads' ERROR records with their tracebacks, the asyncio note about
    a TensorStore future nobody awaited, and Orbax's warning that a reader's directory is read-only."""

    def filter(self, record: logging.LogRecord) -> bool:
        from_orbax = record.pathname.startswith(_ORBAX_DIR)
        if from_orbax and record.levelno >= logging.ERROR and record.exc_info:
            return False
        message = record.getMessage() if record.levelno >= logging.WARNING else ""
        if from_orbax and message.startswith("Given directory is read only"):
            return False
        if "exception was never retrieved" in message and record.exc_info and record.exc_info[1] is not None:
            return not _TENSORSTORE_ERROR.match(str(record.exc_info[1]))
        return True


_QUIET = _Quiet()
_installed = False
_save_failed = False  # an OSError of a save was raised: Orbax's abandoned writes are debris from then on


def _from_orbax(unraisable) -> bool:
    code = getattr(unraisable.object, "cr_code", None) or getattr(unraisable.object, "gi_code", None)
    files = [code.co_filename] if code is not None else []
    tb = unraisable.exc_traceback
    while tb is not None:
        files.append(tb.tb_frame.f_code.co_filename)
        tb = tb.tb_next
    return any(f.startswith(_ORBAX_DIR) for f in files)


def _install_quiet() -> None:
    """Once per process: the filter on the ``absl`` and ``asyncio`` loggers, and an unraisable-exception hook
    that drops TensorStore's late callbacks into a closed event loop after a failed read ("Event loop is
    closed", a traceback each) and, once a save's OSError was raised, the coroutines of Orbax's abandoned
    writes collected at exit (a traceback each); every other unraisable exception goes to the previous hook."""
    global _installed
    if _installed:
        return
    _installed = True
    for name in ("absl", "asyncio"):
        logging.getLogger(name).addFilter(_QUIET)
    previous = sys.unraisablehook

    def hook(unraisable):
        if isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed":
            return
        try:
            if _save_failed and _from_orbax(unraisable):
                return
        except Exception:  # noqa: BLE001 (late in the interpreter's shutdown: let the previous hook speak)
            pass
        previous(unraisable)

    sys.unraisablehook = hook


# ------------------------------------------------------------------ errors in plain words

_STATUS = {  # TensorStore's status codes, in words
    "DATA_LOSS": "{its} files are damaged",
    "NOT_FOUND": "one of {its} files is missing",
    "FAILED_PRECONDITION": "{its} files are not in the layout this version of ncjax reads",
    "INVALID_ARGUMENT": "{its} files are not in the layout this version of ncjax reads",
    "OUT_OF_RANGE": "one of {its} files is shorter than its index says",
    "PERMISSION_DENIED": "one of {its} files cannot be opened (permission denied)",
    "UNAVAILABLE": "{its} storage did not answer",
}


def _os_error(error: BaseException, path: Path | str) -> OSError | None:
    """An OSError with the cause of an Orbax/TensorStore failure that was the operating system's, else None."""
    for cause in (error, error.__cause__, error.__context__):
        if isinstance(cause, OSError):
            return cause
        text = str(cause) if cause is not None else ""
        code = re.search(r"os_error_code='?(\d+)", text)
        if code or "No space left on device" in text:
            number = int(code.group(1)) if code else errno_lib.ENOSPC
            words = os.strerror(number)
            return OSError(number, words[:1].lower() + words[1:], str(path))
    return None


def _item_of(text: str, items) -> str | None:
    found = re.search(r"/(" + "|".join(map(re.escape, items)) + r")(?:\.orbax-checkpoint-tmp)?/", text)
    return found.group(1) if found else None


def _plain(error: BaseException, item: str | None = None) -> str:
    """A few plain words for an Orbax/TensorStore read error: the item, the leaf where known, what is wrong."""
    text = str(error)
    item = item or _item_of(text, ("params", "opt_state", "meta"))
    its = f"its {item}" if item else "its"
    leaf = re.search(r'Error (?:reading|writing|opening) "([^"/]+)/', text)  # "head.classifier.bias/.zarray"
    at = f" (reading {leaf.group(1).replace('.', '/')})" if leaf else ""
    status = re.match(r"([A-Z_]+): ", text)
    if status and status.group(1) in _STATUS:
        return _STATUS[status.group(1)].format(its=its) + at
    if isinstance(error, json.JSONDecodeError):
        return f"{its} metadata is not valid JSON"
    if "Topology mismatch" in text:
        return f"{its} sharding file is damaged or from other devices"
    if isinstance(error, FileNotFoundError) or "not found" in text.lower() or "does not exist" in text.lower():
        return f"one of {its} files is missing"
    if isinstance(error, (KeyError, AttributeError, TypeError, IndexError)):
        return f"{its} metadata is incomplete or in a format this version of ncjax does not read"
    if any(word in text.lower() for word in ("shape", "dtype", "structure")):
        return f"{its} arrays do not have the shapes and types this model needs"
    return f"{its} files are not in the format this version of ncjax reads"


# ------------------------------------------------------------------ the checkpoints of a group


_ONE_SAVE = threading.Lock()


class GroupCheckpoints:
    """The checkpoints of one group, in ``<group folder>/checkpoints``.

    ``exclusive``: for groups trained at once in one process, whose saves must run one at a time, each to
    its end: two Orbax managers saving at once collide in Orbax's temporary folders (a save failed with
    "Directory not empty" beside another group's save of the same step).
    """

    def __init__(self, group_dir: Path | str, max_to_keep: int | None = None, read_only: bool = False,
                 exclusive: bool = False):
        """``read_only``: for readers beside a possibly running trainer (no clean-up, no folder creation)."""
        _install_quiet()
        self._exclusive = exclusive
        self.directory = Path(group_dir) / CHECKPOINTS
        if read_only:  # only what a reader may set: Orbax warns about every option it has to override
            options = ocp.CheckpointManagerOptions(read_only=True, save_interval_steps=0, create=False,
                                                   cleanup_tmp_directories=False, enable_async_checkpointing=False)
        else:
            options = ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, enable_async_checkpointing=True, cleanup_tmp_directories=True,
                todelete_subdir=_TRASH, create=True)
        handlers = dict(params=ocp.StandardCheckpointHandler(), opt_state=ocp.StandardCheckpointHandler(),
                        meta=ocp.JsonCheckpointHandler())
        self._failed: OSError | None = None  # an OS failure of a save, already raised once
        with self._write_errors():
            self._manager = ocp.CheckpointManager(self.directory.absolute(), options=options, item_handlers=handlers)

    def steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, params: Any, opt_state: Any, meta: dict[str, Any]) -> None:
        """Start an async save of step ``step``; the arrays are copied, and their digests computed, before this
        returns (``meta["digests"]`` is set here: the key is reserved)."""
        if step in self._manager.all_steps():  # a step is a deterministic function of its number
            return
        with _ONE_SAVE if self._exclusive else contextlib.nullcontext(), self._write_errors():
            self._empty_trash()
            params, opt_state = _on_host(params), _on_host(opt_state)
            stored = dict(meta)
            stored[DIGESTS] = dict(params=tree_digests(params), opt_state=tree_digests(opt_state))
            stored[DIGESTS]["meta"] = _meta_digest(stored)
            self._manager.save(step, args=ocp.args.Composite(
                params=ocp.args.StandardSave(params), opt_state=ocp.args.StandardSave(opt_state),
                meta=ocp.args.JsonSave(stored)), force=True)
            if self._exclusive:
                self._manager.wait_until_finished()

    def restore(self, step: int, abstract_params: Any, abstract_opt_state: Any) -> tuple[Any, Any, dict]:
        """(params, opt_state, meta) of ``step``, laid out as the abstract trees' shardings, verified against
        the digests saved with the step (none in a step of an older ncjax: unchecked); a mismatch or an
        unreadable step raises :class:`CheckpointDamaged` (a CheckpointError)."""
        params, opt_state, meta = self._read(step, params=ocp.args.StandardRestore(abstract_params),
                                             opt_state=ocp.args.StandardRestore(abstract_opt_state),
                                             meta=ocp.args.JsonRestore())
        digests = self._verify_meta(step, meta)
        self._verify(step, "params", params, digests)
        self._verify(step, "opt_state", opt_state, digests)
        return params, opt_state, meta

    def restore_latest(self, abstract_params: Any, abstract_opt_state: Any) -> tuple[int, Any, Any, dict] | None:
        """``(step, params, opt_state, meta)`` of the newest intact step; None when there is no step.

        A newer step that fails its integrity check or cannot be read is left as it is (never deleted or
        overwritten) and one warning on stderr names it and the step resumed from; when no step is intact
        a CheckpointError (one line) lists them. OSErrors (the file system, not the checkpoint) propagate.
        """
        damaged: list[CheckpointDamaged] = []
        for step in reversed(self.steps()):
            try:
                params, opt_state, meta = self.restore(step, abstract_params, abstract_opt_state)
            except CheckpointDamaged as error:
                damaged.append(error)
                continue
            if damaged and jax.process_index() == 0:
                newest = damaged[0]
                others = f"; {len(damaged) - 1} later step(s) too" if len(damaged) > 1 else ""
                print(f"warning: checkpoint {newest.path} {newest.verb} ({newest.reason}{others}); "
                      f"resuming from step {step}", file=sys.stderr, flush=True)
            return step, params, opt_state, meta
        if not damaged:
            return None
        listed = "; ".join(f"step {os.path.basename(e.path)}: {e.reason}" for e in damaged[:3])
        more = f"; and {len(damaged) - 3} more" if len(damaged) > 3 else ""
        raise CheckpointError(f"no intact checkpoint in {self.directory} ({listed}{more}); they are left "
                              "untouched: move them aside to start this group afresh")

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
        """(params, meta) of ``step`` without knowing the model: numpy arrays as saved (on any devices, any
        number of them), verified like :meth:`restore`."""
        params, meta = self._read(step, params=None, meta=ocp.args.JsonRestore())
        digests = self._verify_meta(step, meta)
        self._verify(step, "params", params, digests)
        return params, meta

    def read_meta(self, step: int) -> dict[str, Any]:
        """The ``meta`` of ``step`` alone (its own digest verified; the arrays are not read)."""
        meta = self._read(step, meta=ocp.args.JsonRestore())[0]
        self._verify_meta(step, meta)
        return meta

    # ---------------------------------------------------------------- reading and verifying

    def _numpy_args(self, step: int, item: str):
        """Restore ``item`` as numpy arrays of its saved shapes and dtypes (no devices, no sharding files)."""
        metadata = self._manager.item_metadata(step)[item]
        tree = getattr(metadata, "tree", metadata)
        target = jax.tree.map(lambda m: np.empty(m.shape, m.dtype), tree)
        return ocp.args.StandardRestore(target)

    def _read(self, step: int, **items) -> tuple:
        path = self.directory / str(step)
        try:
            items = {name: self._numpy_args(step, name) if args is None else args for name, args in items.items()}
            restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        except OSError:  # the file system, not the checkpoint: keep the traceback, a retry may work
            raise
        except Exception as error:  # Orbax raises many types for unreadable or foreign files
            os_error = _os_error(error, path)
            if isinstance(os_error, OSError) and not isinstance(error, OSError) and os_error.errno not in (
                    errno_lib.ENOENT, errno_lib.EISDIR, errno_lib.ENOTDIR):
                raise os_error from None
            raise CheckpointDamaged(path, _plain(error, self._failing_item(step, items)), verb="cannot be read") from None
        return tuple(restored[name] for name in items)

    def _failing_item(self, step: int, items: dict[str, Any]) -> str | None:
        """Which item cannot be read (restored alone, one after the other): only to say so in the error."""
        if len(items) == 1:
            return next(iter(items))
        for name, args in items.items():
            try:
                self._manager.restore(step, args=ocp.args.Composite(**{name: args}))
            except Exception:  # noqa: BLE001 (a diagnosis: the first item that fails alone)
                return name
        return None

    def _verify_meta(self, step: int, meta: dict[str, Any]) -> dict[str, Any] | None:
        """Check meta's own digest and take the digests out of it (None: a step of an older ncjax)."""
        digests = meta.get(DIGESTS) if isinstance(meta, dict) else None
        if not isinstance(digests, dict):
            return None
        recorded = digests.get("meta")
        if not _unverifiable(recorded) and _meta_digest(meta) != recorded:
            raise CheckpointDamaged(self.directory / str(step), "meta differs from its digest")
        del meta[DIGESTS]
        return digests

    def _verify(self, step: int, item: str, tree: Any, digests: dict[str, Any] | None) -> None:
        recorded = (digests or {}).get(item)
        if not isinstance(recorded, dict):
            return
        actual = tree_digests(tree)
        for name, saved in recorded.items():
            got = actual.get(name)
            if got is None or not isinstance(saved, dict) or _unverifiable(saved.get("digest")):
                continue  # not restored (another tree) or another algorithm: nothing to compare
            if got["dtype"] != saved.get("dtype") or got["shape"] != saved.get("shape"):
                continue  # restored as another dtype on request: its bytes differ by design
            if got["digest"] != saved["digest"]:
                raise CheckpointDamaged(self.directory / str(step), f"{item} leaf {name} differs from its digest")

    # ---------------------------------------------------------------- writing

    @contextlib.contextmanager
    def _write_errors(self, once: bool = False) -> Iterator[None]:
        """An operating-system failure of Orbax's (async) writes as one OSError with its cause; ``once``
        (waiting, closing): not again when it was raised already (a clean-up after the error stays quiet)."""
        try:
            yield
        except Exception as error:
            os_error = _os_error(error, self.directory)
            if os_error is None:
                raise
            if once and self._failed is not None:
                return
            global _save_failed
            self._failed, _save_failed = os_error, True
            if os_error is error:
                raise
            raise os_error from None

    def _empty_trash(self) -> None:
        trash = self.directory / _TRASH
        if jax.process_index() == 0 and trash.exists():
            for old in trash.iterdir():
                old.rmtree()

    def wait(self) -> None:
        """Wait for the save in flight; an operating-system failure of it raises one OSError (once)."""
        with self._write_errors(once=True):
            self._manager.wait_until_finished()

    def reached_preemption(self, step: int) -> bool:
        """Orbax's multi-host-consistent preemption check (all hosts agree on the step)."""
        return self._manager.reached_preemption(step)

    def close(self) -> None:
        with self._write_errors(once=True):
            self._manager.close()


def load_params(workdir: Path | str, depth: int, seed: int, step: int | None = None,
                **point: Any) -> dict[str, Any]:
    """One run's parameters as numpy arrays (the model's params tree), from its group's checkpoint.

    ``depth`` and ``seed`` name the run; ``point`` gives the other swept values of a sweep
    over more axes (e.g. ``**{'train.l2': 5e-4}``). ``step=None``: the latest checkpoint.
    A packed run's stack holds ``max(depths)`` blocks; only the first ``depth`` are its own
    (``ncjax.load_run`` slices them). The arrays are verified against the digests saved with
    the step (a damaged step raises CheckpointError naming it; pass an earlier ``step``);
    reading prints no Orbax warnings.
    """
    return find_run(workdir, depth, seed, step, **point)[1]


def find_run(workdir: Path | str, depth: int, seed: int, step: int | None = None,
             **point: Any) -> tuple[int, dict[str, Any]]:
    """``(step, params)`` of :func:`load_params`: the step it read (the latest when ``step`` is None)."""
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
            meta = checkpoints.read_meta(chosen)
            index = next((i for i, m in enumerate(meta["members"])
                          if m["seed"] == seed and all(m["point"].get(k) == v for k, v in wanted.items())), None)
            if index is None:
                continue
            params, _ = checkpoints.restore_params(chosen)
            return chosen, jax.tree.map(lambda a: np.asarray(a)[index], params)
        finally:
            checkpoints.close()
    where = f"step {step}" if step is not None else "any step"
    raise WorkdirError(f"{workdir} has no checkpoint ({where}) of the run depth={depth}, seed={seed}"
                       + (f", {point}" if point else ""))
