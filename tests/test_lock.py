"""One process per workdir: the lock file, its holder's message, stale locks and the takeover race."""

import errno
import json
import multiprocessing
import os
import socket
import subprocess
import sys

import pytest

from ncjax.errors import WorkdirError
from ncjax.lock import LOCK_NAME, WorkdirLock, pid_alive

HOST = socket.gethostname()


def dead_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def write_lock(workdir, **holder):
    workdir.mkdir(parents=True, exist_ok=True)
    content = dict(dict(host=HOST, purpose="training", started="2026-01-02T03:04:05+00:00"), **holder)
    (workdir / LOCK_NAME).write_text(json.dumps(content))
    return (workdir / LOCK_NAME).read_text()


def take(workdir, purpose="training"):
    return WorkdirLock(workdir, purpose=purpose, is_writer=True)


def test_the_lock_names_its_holder_and_goes_on_exit(tmp_path):
    workdir = tmp_path / "new" / "w"  # not there yet: created
    with take(workdir, "re-evaluation") as lock:
        assert lock.held
        holder = json.loads((workdir / LOCK_NAME).read_text())
        assert holder["host"] == HOST and holder["pid"] == os.getpid() and holder["purpose"] == "re-evaluation"
        assert holder["started"][:2] == "20"
    assert not (workdir / LOCK_NAME).exists()
    assert not workdir.exists()  # created for the lock and left empty: removed again


def test_released_on_an_exception_and_the_workdir_kept_when_used(tmp_path):
    workdir = tmp_path / "w"
    with pytest.raises(KeyError):
        with take(workdir):
            (workdir / "config.json").write_text("{}")
            raise KeyError("boom")
    assert not (workdir / LOCK_NAME).exists() and (workdir / "config.json").exists()


def test_a_live_holder_is_refused_in_one_line(tmp_path):
    workdir = tmp_path / "w"
    before = write_lock(workdir, pid=os.getppid())  # alive: the process that started pytest
    with pytest.raises(WorkdirError) as refused:
        take(workdir).acquire()
    message = str(refused.value)
    assert len(message.splitlines()) == 1
    for part in (str(workdir), "training", f"pid {os.getppid()}", HOST, "since 2026-01-02T03:04:05+00:00",
                 "another --workdir"):
        assert part in message, (part, message)
    assert (workdir / LOCK_NAME).read_text() == before  # untouched


def test_a_stale_lock_is_taken_over(tmp_path):
    workdir = tmp_path / "w"
    write_lock(workdir, pid=dead_pid())
    with take(workdir) as lock:
        assert lock.held and json.loads((workdir / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert not (workdir / LOCK_NAME).exists()


def test_a_reused_pid_is_recognised_as_stale(tmp_path):
    workdir = tmp_path / "w"
    write_lock(workdir, pid=os.getppid(), process_start="another-boot/12345")  # alive, but another process
    if not pid_alive(os.getppid(), None) or pid_alive(os.getppid(), "another-boot/12345"):
        pytest.skip("no /proc here: process start times are not compared")
    with take(workdir) as lock:
        assert lock.held


def test_another_hosts_lock_is_refused_and_kept(tmp_path):
    workdir = tmp_path / "w"
    before = write_lock(workdir, host="node-17", pid=dead_pid())
    with pytest.raises(WorkdirError) as refused:
        take(workdir).acquire()
    message = str(refused.value)
    assert len(message.splitlines()) == 1 and "node-17" in message
    assert f"remove {workdir / LOCK_NAME} if no process on node-17 uses this workdir" in message
    assert (workdir / LOCK_NAME).read_text() == before


def test_a_damaged_lock_is_refused(tmp_path):
    workdir = tmp_path / "w"
    workdir.mkdir()
    (workdir / LOCK_NAME).write_text("{not json")
    with pytest.raises(WorkdirError, match="damaged lock file"):
        take(workdir).acquire()


def test_nested_in_one_process_and_only_the_writer_locks(tmp_path):
    workdir = tmp_path / "w"
    with take(workdir) as outer:
        with take(workdir) as inner:  # e.g. re-evaluation inside the training command
            assert not inner.held
        assert (workdir / LOCK_NAME).exists() and outer.held
    assert not (workdir / LOCK_NAME).exists()
    with WorkdirLock(workdir, is_writer=False) as other_process:  # process 1..n of a multi-host run
        assert not other_process.held and not (workdir / LOCK_NAME).exists()


def test_workdir_under_a_file_is_a_one_line_error(tmp_path):
    (tmp_path / "somefile").write_text("x")
    with pytest.raises(WorkdirError, match="a part of its path is a file"):
        take(tmp_path / "somefile" / "sub").acquire()
    with pytest.raises(WorkdirError, match="is a file, not a folder"):
        take(tmp_path / "somefile").acquire()


def test_a_read_only_workdir_is_read_unlocked_unless_someone_holds_it(tmp_path, monkeypatch):
    workdir = tmp_path / "w"
    workdir.mkdir()

    def read_only(self):
        raise OSError(errno.EROFS, "Read-only file system", str(self.path))

    monkeypatch.setattr(WorkdirLock, "_create", read_only)
    with take(workdir, "re-evaluation") as lock:
        assert not lock.held  # nothing can be written here by this process: no lock
    write_lock(workdir, pid=os.getppid())
    with pytest.raises(WorkdirError, match="is in use by training"):
        take(workdir, "re-evaluation").acquire()


def test_takeover_race_interleaved(tmp_path):
    """A reads the stale lock, B takes it over meanwhile: A must not remove B's lock, and is refused."""
    workdir = tmp_path / "w"
    write_lock(workdir, pid=dead_pid())
    b_holder = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        a, b = take(workdir), take(workdir)
        b.pid = b_holder.pid  # B stands for another live process of this host
        b_inside = []
        a._before_takeover = lambda: b_inside.append(b.acquire())
        with pytest.raises(WorkdirError, match=f"pid {b_holder.pid}"):
            a.acquire()
        assert b_inside and b.held and json.loads((workdir / LOCK_NAME).read_text())["pid"] == b_holder.pid
        b.release()
        assert not (workdir / LOCK_NAME).exists()
    finally:
        b_holder.stdin.close()
        b_holder.wait()


def _contender(workdir, start, all_read, tried, released, results, trials):
    from ncjax.lock import WorkdirLock as Lock  # noqa: PLC0415 (a spawned process)
    for trial in range(trials):
        start.wait()
        lock = Lock(workdir, is_writer=True)
        if trial % 2 == 0:  # every contender has read the stale lock before any of them goes on to take it over
            fired = []
            lock._before_takeover = lambda: fired or (fired.append(1), all_read.wait())
        try:
            lock.acquire()
            results.put(("won", os.getpid()))
        except WorkdirError as error:
            results.put(("refused", str(error)))
        tried.wait()
        lock.release()
        released.wait()


def test_takeover_race_between_processes(tmp_path):
    """Processes released together at a barrier race for one stale lock, many times (every other time held
    at a second barrier after reading it, the widest window): exactly one wins each time, the others are
    refused naming it."""
    workdir = tmp_path / "w"
    contenders, trials = 3, 24
    context = multiprocessing.get_context("spawn")
    start, tried, released = (context.Barrier(contenders + 1, timeout=120) for _ in range(3))
    all_read = context.Barrier(contenders, timeout=120)
    results = context.Queue()
    processes = [context.Process(target=_contender,
                                 args=(str(workdir), start, all_read, tried, released, results, trials))
                 for _ in range(contenders)]
    for process in processes:
        process.start()
    try:
        stale = dead_pid()
        for trial in range(trials):
            write_lock(workdir, pid=stale)
            start.wait()
            tried.wait()
            outcome = [results.get(timeout=120) for _ in range(contenders)]
            winners = [pid for kind, pid in outcome if kind == "won"]
            assert len(winners) == 1, (trial, outcome)
            for kind, message in outcome:
                if kind == "refused":
                    assert f"pid {winners[0]}" in message and len(message.splitlines()) == 1, message
            released.wait()
            assert not (workdir / LOCK_NAME).exists()
    finally:
        for process in processes:
            process.join(timeout=60)
            if process.is_alive():
                process.kill()
    assert all(process.exitcode == 0 for process in processes)


HOLD = "import sys; from ncjax.lock import WorkdirLock; WorkdirLock(sys.argv[1], is_writer=True).acquire(); " \
       "print('held', flush=True); sys.stdin.read()"


def test_a_killed_holder_leaves_a_stale_lock_that_the_next_process_takes_over(tmp_path):
    workdir = tmp_path / "w"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(workdir)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(WorkdirError, match=f"pid {holder.pid}"):  # alive (its start time matches too)
            take(workdir).acquire()
        holder.kill()  # SIGKILL: no release
        holder.wait()
        assert json.loads((workdir / LOCK_NAME).read_text())["pid"] == holder.pid
        with take(workdir) as lock:
            assert lock.held and json.loads((workdir / LOCK_NAME).read_text())["pid"] == os.getpid()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


def test_the_object_store_path(tmp_path, monkeypatch):
    """gs:// and other backends without exclusive creation: check, write, read back (run here on a local folder
    through the same epath calls)."""
    import ncjax.lock
    monkeypatch.setattr(ncjax.lock, "_is_local", lambda path: False)
    workdir = tmp_path / "w"
    with take(workdir) as lock:
        assert lock.held and json.loads((workdir / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert not (workdir / LOCK_NAME).exists()
    write_lock(workdir, pid=os.getppid())
    with pytest.raises(WorkdirError, match=f"pid {os.getppid()}"):
        take(workdir).acquire()
    write_lock(workdir, pid=dead_pid())
    with take(workdir) as lock:
        assert lock.held
