"""Group checkpoints: digests saved with every step and verified on every read, the fallback to an intact
step, errors in plain words, a full disk as one OSError, and reading without Orbax's warnings."""

import errno
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from ncjax import checkpoints
from ncjax.checkpoints import GroupCheckpoints, load_params, tree_digests
from ncjax.errors import CheckpointError

REPO = Path(__file__).resolve().parents[1]
MEMBERS = 4


def state(seed: int):
    """params (one leaf of random bits, which zstd stores as they are: a bit flip in the file is a bit flip of
    the value) and opt_state, every leaf with a leading member axis."""
    rng = np.random.default_rng(seed)
    params = {"dense": {"kernel": rng.normal(size=(MEMBERS, 8, 16)).astype(np.float32),
                        "bias": np.zeros((MEMBERS, 16), np.float32)},
              "bits": rng.integers(-2**31, 2**31 - 1, size=(MEMBERS, 512), dtype=np.int32)}
    opt_state = ({"count": np.full((MEMBERS,), seed, np.int32), "mu": jax.tree.map(np.ones_like, params)},)
    return jax.tree.map(jnp.asarray, params), jax.tree.map(jnp.asarray, opt_state)


def meta(step: int):
    return dict(step=step, members=[dict(run=f"depth_001/seed_{s}", depth=1, seed=s, point={"depth": 1})
                                    for s in range(MEMBERS)])


def abstract(tree):
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), tree)


def save_steps(group: Path, *steps: int) -> None:
    ckpt = GroupCheckpoints(group, max_to_keep=5)
    try:
        for step in steps:
            ckpt.save(step, *state(step), meta(step))
            ckpt.wait()
    finally:
        ckpt.close()


def files(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def flip_a_bit_of(group: Path, step: int, values: np.ndarray) -> Path:
    """Flip one bit of ``values``' bytes where they lie in the step's files (stored uncompressed)."""
    needle = values.tobytes()
    for path in sorted((group / "checkpoints" / str(step)).rglob("*")):
        data = path.read_bytes() if path.is_file() else b""
        if needle in data:
            flipped = bytearray(data)
            flipped[data.index(needle) + 5] ^= 0x10
            path.write_bytes(bytes(flipped))
            return path
    raise AssertionError("the values are not stored as they are")


def read(group: Path, step: int):
    ckpt = GroupCheckpoints(group, read_only=True)
    try:
        params, opt_state = state(step)
        return ckpt.restore(step, abstract(params), abstract(opt_state))
    finally:
        ckpt.close()


def one_line(error) -> str:
    message = str(error.value)
    assert len(message.splitlines()) == 1, message
    return message


# ------------------------------------------------------------------ digests


def test_digests_are_saved_with_the_step_and_meta_comes_back_as_given(tmp_path):
    group = tmp_path / "depth_001"
    save_steps(group, 10)
    stored = json.loads((group / "checkpoints" / "10" / "meta" / "metadata").read_text())
    params, opt_state = state(10)
    assert set(stored["digests"]["params"]) == {"dense/kernel", "dense/bias", "bits"}
    assert set(stored["digests"]["opt_state"]) == {"0/count", "0/mu/dense/kernel", "0/mu/dense/bias", "0/mu/bits"}
    kernel = np.asarray(params["dense"]["kernel"])
    import zlib
    assert stored["digests"]["params"]["dense/kernel"] == dict(
        dtype="float32", shape=[MEMBERS, 8, 16], digest=f"crc32:{zlib.crc32(kernel.tobytes()):08x}")
    restored_params, restored_opt, restored_meta = read(group, 10)
    assert restored_meta == meta(10)  # the digests are taken out
    for a, b in zip(jax.tree.leaves((params, opt_state)), jax.tree.leaves((restored_params, restored_opt))):
        np.testing.assert_array_equal(a, b)


def test_a_save_in_flight_keeps_the_values_it_was_given_through_a_donation(tmp_path):
    """The step holds the values ``save`` was called with, though the next program donated (and overwrote)
    their buffers while the save was still being written, and restores onto another sharding."""
    mesh = jax.make_mesh((len(jax.devices()),), ("d",))
    params, opt_state = state(3)
    sharded = jax.device_put(params, NamedSharding(mesh, P(None, "d")))  # every leaf over the 8 devices
    want = jax.device_get((sharded, opt_state))
    ckpt = GroupCheckpoints(tmp_path / "group")
    try:
        ckpt.save(3, sharded, opt_state, meta(3))
        overwrite = jax.jit(lambda tree: jax.tree.map(lambda a: a * 0 - 1, tree), donate_argnums=0)
        jax.block_until_ready(overwrite((sharded, opt_state)))
        ckpt.wait()
        replicated = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=NamedSharding(mesh, P())),
                                  (want[0], want[1]))
        got = ckpt.restore(3, *replicated)
    finally:
        ckpt.close()
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got[:2])):
        np.testing.assert_array_equal(a, b)
    assert all(leaf.sharding.is_fully_replicated for leaf in jax.tree.leaves(got[:2]))


def test_digests_do_not_depend_on_the_sharding():
    mesh = jax.make_mesh((len(jax.devices()),), ("d",))
    value = np.arange(8 * 16, dtype=np.float32).reshape(8, 16)
    sharded = jax.device_put(value, NamedSharding(mesh, P("d")))
    replicated = jax.device_put(value, NamedSharding(mesh, P()))
    assert tree_digests({"x": sharded}) == tree_digests({"x": replicated}) == tree_digests({"x": value})


def test_a_flipped_bit_is_detected_by_every_reader(tmp_path):
    workdir = tmp_path / "w"
    group = workdir / "depth_001"
    save_steps(group, 10)
    flip_a_bit_of(group, 10, np.asarray(state(10)[0]["bits"])[1, 3:9])
    before = files(workdir)
    with pytest.raises(CheckpointError) as restore:
        read(group, 10)
    with pytest.raises(CheckpointError) as restore_params:
        GroupCheckpoints(group, read_only=True).restore_params(10)
    with pytest.raises(CheckpointError) as loaded:
        load_params(workdir, depth=1, seed=2)
    for error in (restore, restore_params, loaded):
        message = one_line(error)
        assert f"checkpoint {group / 'checkpoints' / '10'} failed its integrity check" in message
        assert "params leaf bits differs from its digest" in message
    assert files(workdir) == before  # left as it was


def test_files_of_another_step_are_detected(tmp_path):
    """Self-consistent files that TensorStore reads without complaint, but not the ones saved with this meta."""
    group = tmp_path / "depth_001"
    save_steps(group, 10, 20)
    step_10 = group / "checkpoints" / "10" / "opt_state"
    shutil.rmtree(step_10)
    shutil.copytree(group / "checkpoints" / "20" / "opt_state", step_10)
    with pytest.raises(CheckpointError, match="opt_state leaf 0/count differs from its digest"):
        read(group, 10)


def test_an_edited_meta_is_detected(tmp_path):
    group = tmp_path / "depth_001"
    save_steps(group, 10)
    path = group / "checkpoints" / "10" / "meta" / "metadata"
    path.write_text(path.read_text().replace('"step": 10', '"step": 11'))
    with pytest.raises(CheckpointError, match="meta differs from its digest"):
        read(group, 10)


def test_a_step_without_digests_restores_unchecked(tmp_path):
    """A step written by an older ncjax (the same items, no digests)."""
    group = tmp_path / "depth_001"
    manager = ocp.CheckpointManager((group / "checkpoints").absolute())
    params, opt_state = state(10)
    manager.save(10, args=ocp.args.Composite(params=ocp.args.StandardSave(params),
                                             opt_state=ocp.args.StandardSave(opt_state),
                                             meta=ocp.args.JsonSave(meta(10))))
    manager.wait_until_finished()
    manager.close()
    restored_params, _, restored_meta = read(group, 10)
    assert restored_meta == meta(10)
    np.testing.assert_array_equal(restored_params["bits"], params["bits"])
    np.testing.assert_array_equal(load_params(tmp_path, depth=1, seed=3)["bits"], np.asarray(params["bits"])[3])


# ------------------------------------------------------------------ the fallback


def test_restore_latest_falls_back_to_the_newest_intact_step(tmp_path, capsys):
    group = tmp_path / "depth_001"
    save_steps(group, 10, 20, 30)
    flip_a_bit_of(group, 30, np.asarray(state(30)[0]["bits"])[0, 100:106])
    shutil.rmtree(group / "checkpoints" / "20" / "params" / "d")  # unreadable
    before = files(group)
    ckpt = GroupCheckpoints(group, max_to_keep=5)
    try:
        params, opt_state = state(0)
        capsys.readouterr()
        step, restored, _, restored_meta = ckpt.restore_latest(abstract(params), abstract(opt_state))
    finally:
        ckpt.close()
    assert step == 10 and restored_meta["step"] == 10
    np.testing.assert_array_equal(restored["bits"], state(10)[0]["bits"])
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"warning: checkpoint {group / 'checkpoints' / '30'} failed its integrity check (params leaf "
                   "bits differs from its digest; 1 later step(s) too); resuming from step 10"], err
    assert files(group) == before  # the damaged steps are kept as they are


def test_restore_latest_without_steps_or_without_an_intact_one(tmp_path):
    group = tmp_path / "depth_001"
    params, opt_state = state(0)
    ckpt = GroupCheckpoints(group)
    try:
        assert ckpt.restore_latest(abstract(params), abstract(opt_state)) is None
    finally:
        ckpt.close()
    save_steps(group, 10)
    flip_a_bit_of(group, 10, np.asarray(state(10)[0]["bits"])[2, 7:13])
    ckpt = GroupCheckpoints(group)
    try:
        with pytest.raises(CheckpointError) as error:
            ckpt.restore_latest(abstract(params), abstract(opt_state))
    finally:
        ckpt.close()
    message = one_line(error)
    assert "no intact checkpoint" in message and "step 10: params leaf bits differs from its digest" in message


# ------------------------------------------------------------------ errors in plain words


def test_unreadable_files_are_named_in_plain_words(tmp_path):
    group = tmp_path / "depth_001"
    save_steps(group, 10)
    for path in (group / "checkpoints" / "10" / "params").rglob("*"):
        if path.is_file() and path.stat().st_size > 0 and "METADATA" not in path.name and "sharding" not in path.name:
            path.write_bytes(b"\0garbage" * 3)
    with pytest.raises(CheckpointError) as error:
        read(group, 10)
    message = one_line(error)
    assert message.startswith(f"checkpoint {group / 'checkpoints' / '10'} cannot be read (its params ")
    for raw in ("DATA_LOSS", "zarr", "tensorstore", "OCDBT", "Error", "ValueError", "driver"):
        assert raw not in message, message


def test_plain_words_for_tensorstore_messages():
    error = ValueError('NOT_FOUND: Error opening "zarr" driver: Error reading "dense.kernel/.zarray" in OCDBT '
                       'database at local file "/w/g/checkpoints/60/opt_state/": [tensorstore_spec=\'{}\']')
    assert checkpoints._plain(error) == "one of its opt_state files is missing (reading dense/kernel)"
    assert checkpoints._plain(json.JSONDecodeError("Expecting value", "", 0), "meta") == \
        "its meta metadata is not valid JSON"


# ------------------------------------------------------------------ a full disk


def test_a_failed_async_save_is_one_oserror_with_its_cause(tmp_path):
    group = tmp_path / "depth_001"
    ckpt = GroupCheckpoints(group, max_to_keep=2)
    ckpt.save(10, *state(10), meta(10))
    ckpt.wait()
    tensorstore_error = ValueError(
        'RESOURCE_EXHAUSTED: Error writing "bits/0.0" in OCDBT database at local file "/x/": Failed to write '
        "2662625 bytes to file 11: No space left on device [os_error_code='28']")

    def full(*_, **__):
        raise tensorstore_error

    real_wait = ckpt._manager.wait_until_finished
    ckpt._manager.wait_until_finished = full
    with pytest.raises(OSError) as error:
        ckpt.wait()
    assert error.value.errno == errno.ENOSPC and error.value.__cause__ is None
    assert str(error.value) == f"[Errno 28] no space left on device: '{group / 'checkpoints'}'"
    ckpt.wait()  # the clean-up after the error stays quiet: raised once
    ckpt._manager.wait_until_finished = real_wait
    ckpt.close()


def _mount_tmpfs(path: Path, size: str) -> bool:
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    path.mkdir()
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


FULL_DISK = textwrap.dedent("""
    import sys
    import jax
    from ncjax.checkpoints import GroupCheckpoints
    ckpt = GroupCheckpoints(sys.argv[1], max_to_keep=2)
    state = {"x": jax.random.normal(jax.random.key(0), (4, 200_000))}
    ckpt.save(10, state, state, {"step": 10})
    ckpt.save(20, state, state, {"step": 20})
    ckpt.wait()
    ckpt.close()
""")


def test_a_full_disk_is_one_cause_not_a_page_of_tracebacks(tmp_path):
    full = tmp_path / "full"
    if not _mount_tmpfs(full, "1M"):
        pytest.skip("needs root to mount a 1 MB tmpfs (the monkeypatched test above covers the translation)")
    try:
        result = subprocess.run([sys.executable, "-c", FULL_DISK, str(full / "depth_001")], cwd=REPO,
                                capture_output=True, text=True, timeout=300)
    finally:
        subprocess.run(["umount", str(full)], check=False)
    assert result.returncode == 1
    assert result.stderr.count("Traceback") == 1, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == (
        f"OSError: [Errno 28] no space left on device: '{full / 'depth_001' / 'checkpoints'}'")


# ------------------------------------------------------------------ reading a workdir


def test_reading_prints_no_orbax_warnings(tmp_path, caplog, capfd):
    workdir = tmp_path / "w"
    for group in ("depth_001", "depth_002", "depth_003"):
        save_steps(workdir / group, 10)
    capfd.readouterr()
    caplog.clear()
    with caplog.at_level(logging.INFO):
        for seed in range(MEMBERS):
            np.testing.assert_array_equal(load_params(workdir, depth=1, seed=seed)["bits"],
                                          np.asarray(state(10)[0]["bits"])[seed])
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    out, err = capfd.readouterr()
    assert "WARNING" not in err and "read only" not in err, err


RESTORE_ELSEWHERE = textwrap.dedent("""
    import sys
    import numpy as np
    import jax
    from ncjax.checkpoints import GroupCheckpoints
    assert len(jax.devices()) == 1
    params, meta = GroupCheckpoints(sys.argv[1], read_only=True).restore_params(10)
    assert isinstance(params["x"], np.ndarray) and meta == {"step": 10}
    np.testing.assert_array_equal(params["x"], np.arange(64.0, dtype=np.float32).reshape(8, 8))
    print("ok")
""")


def test_restore_params_reads_a_checkpoint_of_other_devices(tmp_path):
    """Saved sharded over 8 devices, read back by a process with one (a laptop reading a cluster's run)."""
    mesh = jax.make_mesh((len(jax.devices()),), ("d",))
    x = jax.device_put(np.arange(64.0, dtype=np.float32).reshape(8, 8), NamedSharding(mesh, P(None, "d")))
    ckpt = GroupCheckpoints(tmp_path / "g", max_to_keep=2)
    ckpt.save(10, {"x": x}, {"m": x}, {"step": 10})
    ckpt.close()
    env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-c", RESTORE_ELSEWHERE, str(tmp_path / "g")], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


TWO_PROCESSES = textwrap.dedent("""
    import sys
    import jax
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    from ncjax.checkpoints import GroupCheckpoints
    from ncjax.errors import CheckpointError
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(sys.argv[1], num_processes=2, process_id=int(sys.argv[2]))
    mesh = jax.make_mesh((8,), ("d",))
    value = np.arange(4 * 64, dtype=np.float32).reshape(4, 64)
    sharded = NamedSharding(mesh, P(None, "d"))  # over both processes: no process holds it all
    params = {"w": jax.make_array_from_callback(value.shape, sharded, lambda index: value[index]),
              "b": jax.make_array_from_callback((4,), NamedSharding(mesh, P()), lambda index: np.ones(4)[index])}
    ckpt = GroupCheckpoints(sys.argv[3], max_to_keep=3)
    ckpt.save(10, params, params, {"step": 10})
    ckpt.wait()
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), params)
    step, restored, _, meta = ckpt.restore_latest(abstract, abstract)
    assert step == 10 and meta == {"step": 10}
    ckpt.close()
    print("ok", jax.process_index())
""")


def test_two_processes_digest_and_verify_leaves_sharded_over_both(tmp_path):
    """Multi-host: a leaf sharded over the processes is gathered for its digest (at save and at restore, a
    collective both call), a replicated one read from the local copy; one process alone then reads it back."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "OMPI_", "TPU_", "JAX_COORD"))}
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4")
    group = tmp_path / "depth_001"
    procs = [subprocess.Popen([sys.executable, "-c", TWO_PROCESSES, f"127.0.0.1:{port}", str(i), str(group)],
                              cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in (0, 1)]
    try:
        outs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for i, (p, out) in enumerate(zip(procs, outs)):
        assert p.returncode == 0 and f"ok {i}" in out, out[-3000:]
    params, meta = GroupCheckpoints(group, read_only=True).restore_params(10)
    np.testing.assert_array_equal(params["w"], np.arange(4 * 64, dtype=np.float32).reshape(4, 64))
    stored = json.loads((group / "checkpoints" / "10" / "meta" / "metadata").read_text())
    assert stored["digests"]["params"]["w"]["shape"] == [4, 64]
