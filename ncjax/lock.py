"""One process per workdir: the lock file ``<workdir>/.ncjax.lock``.

    with WorkdirLock(workdir, purpose="training"):
        ...  # train, re-evaluate, redraw

The lock file holds ``{host, pid, purpose, started, token}`` of the process that holds it.
Taking it:

- the file is created exclusively, already complete (written to a temporary file, then
  hard-linked to its name, which fails if the name exists; ``O_CREAT|O_EXCL`` where the file
  system has no hard links), so a reader never sees half a lock;
- held by a live process (this host, the pid exists and is the same process: its start time
  is recorded too, so a reused pid is recognised): :class:`~ncjax.errors.WorkdirError` at once,
  one line naming the holder and what to do (exit status 2);
- stale (this host, the holder is gone: killed, crashed, the machine rebooted): taken over.
  The takeover removes the stale file only while holding an ``flock`` on
  ``<workdir>/.ncjax.lock.takeover`` and only if the file still holds the stale content, then
  creates its own exclusively: of processes racing for the same stale lock exactly one wins
  and the others are refused naming it;
- held by another host: its process cannot be checked from here, so the lock is refused,
  saying to remove the file if no process on that host uses the workdir.

The lock is released (the file removed, if it is still this holder's) on leaving the
``with`` block, on an exception too; a SIGKILLed holder leaves a stale lock that the next
run takes over. A process may take the lock on the same workdir again while it holds it
(nested: a no-op). The workdir is created if missing (and removed again on release if the
lock left it empty).

Only the writer of a multi-host run takes the lock (``is_writer``; default:
``jax.process_index() == 0``, so take it after ``jax.distributed.initialize``).

Read-only workdirs: a process that cannot create the lock file because the folder is
not writable (read-only file system or permissions) takes no lock: it can write nothing
there, so it can only read; a live holder's lock found there is still refused.

Object stores (``gs://``, other ``etils.epath`` backends without exclusive creation): the
best available create-if-absent (check, write, read back the token); two processes starting
within the same instant may both pass there.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import os
import socket
import sys
import threading
import uuid
from typing import Any, Callable

from etils.epath import Path

from ncjax.errors import WorkdirError

LOCK_NAME = ".ncjax.lock"
_TAKEOVER = ".ncjax.lock.takeover"
_READ_ONLY = (errno.EROFS, errno.EACCES, errno.EPERM)
_held: dict[str, int] = {}  # lock path → nesting depth, in this process
_held_lock = threading.Lock()


def _process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux ``/proc``), with the boot's id: a pid reused
    by another process, or after a reboot, has another one. None where there is no ``/proc``."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
        ticks = stat[stat.rindex(")") + 2:].split()[19]
    except (OSError, ValueError, IndexError):
        return None
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
    except OSError:
        boot = "?"
    return f"{boot}/{ticks}"


def pid_alive(pid: int, start: str | None = None) -> bool:
    """Whether process ``pid`` of this host runs (and, given its recorded ``start``, is that same process)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, another user's
    except OverflowError:
        return False
    if start is not None:
        now = _process_start(pid)
        if now is not None and now != start:
            return False
    return True


def _is_local(path: Path) -> bool:
    text = os.fspath(path) if not isinstance(path, str) else path
    return "://" not in str(text) or str(text).startswith("file://")


def describe(holder: dict[str, Any]) -> str:
    return (f"{holder.get('purpose', 'an ncjax command')} (pid {holder.get('pid', '?')} on "
            f"{holder.get('host', '?')}, since {holder.get('started', '?')})")


class WorkdirLock:
    """``with WorkdirLock(workdir, purpose="training"):`` one process per workdir (see the module docstring)."""

    def __init__(self, workdir: Path | str, purpose: str = "training", *, is_writer: bool | None = None):
        self.workdir = Path(workdir)
        self.path = self.workdir / LOCK_NAME
        self.purpose = purpose
        self._is_writer = is_writer
        self.held = False  # this object created the lock file (and removes it on release)
        self._nested = False
        self._created_workdir = False
        self._token: str | None = None
        self.host, self.pid = socket.gethostname(), os.getpid()
        self._before_takeover: Callable[[], None] | None = None  # tests: a pause between reading and taking over

    # ---------------------------------------------------------------- public

    def __enter__(self) -> "WorkdirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> "WorkdirLock":
        """Take the lock or raise WorkdirError naming its holder."""
        if not self._writer():
            return self
        key = self._key()
        with _held_lock:
            if _held.get(key):
                _held[key] += 1
                self._nested = True
                return self
        self._make_workdir()
        try:
            self._take()
        except BaseException:
            self._remove_workdir_if_empty()
            raise
        if self.held:
            with _held_lock:
                _held[key] = 1
        return self

    def release(self) -> None:
        key = self._key()
        if self._nested:
            with _held_lock:
                _held[key] -= 1
            self._nested = False
            return
        if not self.held:
            self._remove_workdir_if_empty()
            return
        with _held_lock:
            _held.pop(key, None)
        self.held = False
        try:
            holder = self._read()
            if holder is not None and holder.get("token") == self._token:
                self._unlink(self.path)
        except OSError:
            pass  # a lock that cannot be removed is stale once this process ends: the next run takes it over
        self._remove_workdir_if_empty()

    def holder(self) -> dict[str, Any] | None:
        """The lock file's content (None: no lock)."""
        return self._read()

    # ---------------------------------------------------------------- taking

    def _key(self) -> str:
        return os.path.realpath(os.fspath(self.path)) if _is_local(self.path) else os.fspath(self.path)

    def _writer(self) -> bool:
        if self._is_writer is None:
            import jax  # lazily: the lock module itself needs no jax
            self._is_writer = jax.process_index() == 0
        return self._is_writer

    def _make_workdir(self) -> None:
        if self.workdir.exists():
            if not self.workdir.is_dir():
                raise WorkdirError(f"--workdir {self.workdir} is a file, not a folder; use another --workdir")
            return
        try:
            self.workdir.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise WorkdirError(f"--workdir {self.workdir} cannot be created: a part of its path is a file; "
                               "use another --workdir") from None
        except OSError as error:
            if error.errno in _READ_ONLY:
                raise WorkdirError(f"--workdir {self.workdir} cannot be created ({os.strerror(error.errno).lower()});"
                                   " use another --workdir") from None
            raise
        self._created_workdir = True

    def _remove_workdir_if_empty(self) -> None:
        if self._created_workdir and _is_local(self.workdir):
            self._created_workdir = False
            with contextlib.suppress(OSError):
                os.rmdir(os.fspath(self.workdir))

    def _content(self) -> str:
        self._token = uuid.uuid4().hex
        started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        return json.dumps(dict(host=self.host, pid=self.pid, purpose=self.purpose, started=started,
                               process_start=_process_start(self.pid), token=self._token)) + "\n"

    def _take(self) -> None:
        for _ in range(100):  # each round changes what it saw (a lock came or went); never loops for long
            try:
                if self._create():
                    self.held = True
                    return
            except OSError as error:
                if error.errno not in _READ_ONLY:
                    raise
                return self._read_only()
            holder = self._read_settled()
            if holder is None:
                continue  # gone meanwhile: try again
            self._refuse_unless_stale(holder)
            if self._before_takeover is not None:
                self._before_takeover()
            if not self._remove_stale(holder):
                continue
        raise WorkdirError(f"{self.path}: the lock keeps changing hands; try again")

    def _create(self) -> bool:
        """Create the lock file with its content; False if it exists."""
        content = self._content()
        if not _is_local(self.path):
            if self.path.exists():
                return False
            self.path.write_text(content)
            holder = self._read()
            return holder is not None and holder.get("token") == self._token
        target = os.fspath(self.path)
        temporary = f"{target}.{self.pid}.{self._token[:8]}.tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            try:
                os.write(fd, content.encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.link(temporary, target)
                return True
            except FileExistsError:
                return False
            except OSError as error:  # no hard links here (some FUSE/SMB mounts): exclusive create instead
                if error.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                    raise
            try:
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            try:
                os.write(fd, content.encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            return True
        finally:
            with contextlib.suppress(OSError):
                os.unlink(temporary)

    def _read(self) -> dict[str, Any] | None:
        """The lock's content; None if there is no lock; ``{}`` if it cannot be parsed."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        try:
            holder = json.loads(text)
        except ValueError:
            return {}
        return holder if isinstance(holder, dict) else {}

    def _read_settled(self) -> dict[str, Any] | None:
        """The content; an unparsable file is re-read a few times (an exclusive create without hard links writes
        after creating) before it counts as damaged."""
        holder = self._read()
        for _ in range(50):
            if holder != {}:
                return holder
            threading.Event().wait(0.02)
            holder = self._read()
        return holder

    def _refuse_unless_stale(self, holder: dict[str, Any]) -> None:
        where = f"{self.workdir}"
        if not holder:
            raise WorkdirError(f"{where} has a damaged lock file {self.path}; remove it if no ncjax process uses "
                               "this workdir")
        if holder.get("host") != self.host:
            raise WorkdirError(f"{where} is in use by {describe(holder)} according to {self.path}; remove "
                               f"{self.path} if no process on {holder.get('host')} uses this workdir")
        pid = holder.get("pid")
        if not isinstance(pid, int):
            raise WorkdirError(f"{where} has a damaged lock file {self.path}; remove it if no ncjax process uses "
                               "this workdir")
        if pid == self.pid or not pid_alive(pid, holder.get("process_start")):
            return  # stale: its process is gone (this process's own pid: an earlier holder's, reused)
        raise WorkdirError(f"{where} is in use by {describe(holder)}; wait for it to end or stop it, "
                           "or use another --workdir")

    def _remove_stale(self, stale: dict[str, Any]) -> bool:
        """Remove the lock if it still is ``stale``; every remover holds the takeover flock, so of processes
        racing for one stale lock only the first removes it (the others then find the winner's lock)."""
        if not _is_local(self.path):
            if self._read() == stale:
                self._unlink(self.path)
            return True
        import fcntl
        fd = os.open(os.fspath(self.workdir / _TAKEOVER), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError as error:  # no flock on this file system (some network mounts)
                raise WorkdirError(f"{self.workdir} has a stale lock of {describe(stale)} that cannot be taken over "
                                   f"safely here ({os.strerror(error.errno).lower()}); remove {self.path} if no "
                                   "process uses this workdir") from None
            try:
                if self._read() != stale:
                    return False  # taken over (or released) by another process meanwhile: look again
                self._unlink(self.path)
                return True
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def _read_only(self) -> None:
        """The lock file cannot be created (the folder is not writable): refuse a live holder, else go unlocked."""
        holder = self._read_settled()
        if holder:
            self._refuse_unless_stale(holder)

    def _unlink(self, path: Path) -> None:
        try:
            if _is_local(path):
                os.unlink(os.fspath(path))
            else:
                path.unlink()
        except FileNotFoundError:
            pass


def holder(workdir: Path | str) -> dict[str, Any] | None:
    """The content of ``<workdir>/.ncjax.lock`` (None: none)."""
    return WorkdirLock(workdir, is_writer=True).holder()


if __name__ == "__main__":  # python -m ncjax.lock WORKDIR: who holds it
    found = holder(sys.argv[1]) if len(sys.argv) == 2 else None
    print(describe(found) if found else "no lock", file=sys.stderr)
