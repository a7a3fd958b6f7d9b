"""A whole quick run written to an object store (``gs://``) equals the same run written to a local folder.

No bucket is reachable here, so ``gs://`` is served by :class:`ObjectStore`, an fsspec file system
registered for the ``gs``/``gcs`` protocols (what ``etils.epath`` opens ``gs://`` paths with when
TensorFlow is absent, through gcsfs in production) that behaves as Google Cloud Storage does where
it matters and refuses what GCS cannot do:

- an object is written whole: it appears (or is replaced) when its writer closes, never in part;
- no append (``"a"`` modes), no in-place rewrite (``"r+"``, ``"w+"``), no rename (on GCS a copy and a
  delete, not atomic): each raises, and is recorded for the assertion;
- no folders: a "folder" exists while an object lies under it, ``mkdir`` creates nothing.

Orbax writes its checkpoints with TensorStore, whose ``gs://`` driver talks to the real service,
so the checkpoints of this test go to a local folder (every other file of the workdir goes to
the store); Orbax's own GCS support is not ncjax's to test.
"""

from __future__ import annotations

import importlib
import importlib.util
import io
import json
import struct
from pathlib import Path

import pytest
from etils.epath import backend as epath_backend
from fsspec import AbstractFileSystem

BUCKET = "bucket"


class _Upload(io.BytesIO):
    """A write to the store: the object appears whole when the writer closes."""

    def __init__(self, objects: dict, key: str):
        super().__init__()
        self._objects, self._key = objects, key

    def close(self):
        if not self.closed:
            self._objects[self._key] = self.getvalue()
        super().close()


class ObjectStore(AbstractFileSystem):
    """GCS's semantics on a dict ``{"bucket/key": bytes}`` (see the module docstring)."""

    protocol = ("gs", "gcs")
    root_marker = ""
    objects: dict[str, bytes] = {}  # replaced per test
    refused: list[str] = []  # every refused operation, for the assertion message

    @classmethod
    def _strip_protocol(cls, path):
        path = str(path)
        for prefix in ("gs://", "gcs://"):
            path = path.removeprefix(prefix)
        return path.strip("/")

    def _refuse(self, what: str, path: str):
        self.refused.append(f"{what} {path}")
        raise OSError(f"object store: {what} is not supported ({path})")

    def _open(self, path, mode="rb", **kwargs):
        key = self._strip_protocol(path)
        if mode == "rb":
            if key not in self.objects:
                raise FileNotFoundError(path)
            return io.BytesIO(self.objects[key])
        if mode == "wb":
            return _Upload(self.objects, key)
        self._refuse(f"open mode {mode!r}", key)

    def _children(self, key: str) -> dict[str, str]:
        prefix = key + "/" if key else ""
        out = {}
        for name in self.objects:
            if name.startswith(prefix):
                head, _, rest = name[len(prefix):].partition("/")
                out[prefix + head] = "directory" if rest else "file"
        return out

    def ls(self, path, detail=True, **kwargs):
        key = self._strip_protocol(path)
        if key in self.objects:
            entries = {key: "file"}
        else:
            entries = self._children(key)
            if not entries and key != BUCKET:
                raise FileNotFoundError(path)
        listed = [dict(name=name, type=kind, size=len(self.objects.get(name, b""))) for name, kind in
                  sorted(entries.items())]
        return listed if detail else [entry["name"] for entry in listed]

    def info(self, path, **kwargs):
        key = self._strip_protocol(path)
        if key in self.objects:
            return dict(name=key, type="file", size=len(self.objects[key]))
        if key == BUCKET or self._children(key):
            return dict(name=key, type="directory", size=0)
        raise FileNotFoundError(path)

    def mkdir(self, path, create_parents=True, **kwargs):
        pass  # GCS has no folders

    def makedirs(self, path, exist_ok=False):
        pass

    def rmdir(self, path):
        pass

    def _rm(self, path):
        self.objects.pop(self._strip_protocol(path), None)  # a "folder" is nothing to remove

    def mv(self, path1, path2, **kwargs):
        self._refuse("rename", self._strip_protocol(path1))

    rename = move = mv

    def cp_file(self, path1, path2, **kwargs):
        self.objects[self._strip_protocol(path2)] = self.objects[self._strip_protocol(path1)]


@pytest.fixture(scope="module")
def monkeymodule():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.fixture(scope="module")
def store(monkeymodule):
    """``gs://`` served by a fresh ObjectStore for this module; the real registrations come back after it."""
    if importlib.util.find_spec("tensorflow") is not None:
        pytest.skip("etils.epath opens gs:// through TensorFlow when it is installed, not through fsspec")
    monkeymodule.setattr(ObjectStore, "objects", {})
    monkeymodule.setattr(ObjectStore, "refused", [])
    for protocol in ObjectStore.protocol:
        monkeymodule.setitem(importlib.import_module("fsspec.registry")._registry, protocol, ObjectStore)
    ObjectStore.clear_instance_cache()
    epath_backend.fsspec_backend._get_filesystem.cache_clear()  # etils caches the file system it opened
    yield ObjectStore
    epath_backend.fsspec_backend._get_filesystem.cache_clear()
    ObjectStore.clear_instance_cache()


def _local_checkpoints(monkeypatch, root: Path) -> None:
    """Orbax's checkpoints of a ``gs://`` workdir go to ``root`` (TensorStore's gs:// driver needs the service);
    an empty object marks each group's checkpoint folder in the store, as Orbax's files would."""
    from etils import epath

    from ncjax import checkpoints

    original = checkpoints.GroupCheckpoints.__init__

    def init(self, group_dir, *args, **kwargs):
        text = str(group_dir)
        if text.startswith("gs://"):
            if not kwargs.get("read_only"):
                (epath.Path(text) / checkpoints.CHECKPOINTS / "stored_locally").write_bytes(b"")
            group_dir = root / text.removeprefix("gs://")
        original(self, group_dir, *args, **kwargs)

    monkeypatch.setattr(checkpoints.GroupCheckpoints, "__init__", init)


def _config():
    config = importlib.import_module("ncjax.configs.resnet_depth").get_config("quick")
    config.depths, config.seeds, config.train.steps = (1, 2), (0,), 20
    config.checkpoint.every_steps, config.log_every_steps = 10, 5
    config.progress = False
    return config


def _train(workdir) -> None:
    """What ``python -m ncjax.main`` does with a workdir: the lock, the sweep, its summary and figures."""
    from ncjax import lock
    from ncjax.sweep import runner

    with lock.WorkdirLock(workdir, purpose="training"):
        runner.run(_config(), workdir)


def _reevaluate(workdir) -> None:
    """What ``python -m ncjax.evaluate`` does: metrics, TensorBoard's eval folders, summary and figures rewritten."""
    from ncjax import lock
    from ncjax.evaluate.reevaluate import reevaluate

    with lock.WorkdirLock(workdir, purpose="re-evaluation"):
        reevaluate(workdir)


def _events(data: bytes) -> list[tuple]:
    """(step, tag, value, plugin content) of every summary value of a TensorBoard event file (no wall times)."""
    from tensorboardX.proto import event_pb2

    out, i = [], 0
    while i + 12 <= len(data):
        (length,) = struct.unpack("<Q", data[i:i + 8])
        event = event_pb2.Event.FromString(data[i + 12:i + 12 + length])
        i += 12 + length + 4
        for value in event.summary.value:
            out.append((event.step, value.tag, value.simple_value, value.metadata.plugin_data.content))
    return out


def _contents(files: dict[str, bytes]) -> dict[str, object]:
    """What a workdir holds, comparable across runs: event files by their folder (their names hold the time
    and host), parsed; every other file as its bytes; checkpoints left out (they stayed local)."""
    out: dict[str, object] = {}
    for name, data in files.items():
        if "/checkpoints/" in f"/{name}":
            continue
        if "/events.out.tfevents." in name:
            out.setdefault(name.rsplit("/", 1)[0] + "/<events>", []).extend(_events(data))
        else:
            out[name] = data
    return out


def _compare(store, local: Path, prefix: str) -> dict[str, object]:
    assert not store.refused, store.refused  # nothing appended, rewritten in place or renamed
    remote = _contents({key.removeprefix(prefix): data for key, data in store.objects.items()})
    expected = _contents({str(p.relative_to(local)): p.read_bytes() for p in local.rglob("*") if p.is_file()})
    assert sorted(remote) == sorted(expected)
    for name, value in expected.items():
        assert remote[name] == value, name
    return expected


REMOTE = f"gs://{BUCKET}/runs/quick"


@pytest.fixture(scope="module")
def trained(store, monkeymodule, tmp_path_factory):
    """The same quick sweep trained into a local folder and into the object store; the local folder."""
    root = tmp_path_factory.mktemp("object_store")
    _train(root / "local")
    _local_checkpoints(monkeymodule, root / "checkpoints")
    _train(REMOTE)
    return root / "local"


def test_quick_run_on_an_object_store_equals_a_local_run(trained, store):
    expected = _compare(store, trained, f"{BUCKET}/runs/quick/")
    for name in ("config.json", "summary.csv", "slopes.csv", "nc_vs_depth.png", "collapse_vs_steps.png",
                 "nc1_vs_block.png", "depth_002/seed_0/metrics.jsonl", "depth_002/seed_0/train_log.jsonl",
                 "depth_002/seed_0/tensorboard/train/<events>", "depth_002/seed_0/tensorboard/eval/<events>",
                 "depth_002/seed_0/tensorboard/eval/hparams/<events>"):
        assert name in expected, name  # what the comparison covers: every kind of file ncjax writes
    # Not vacuous: the files hold the whole run (the train log was written in several blocks: each a rewrite).
    lines = [json.loads(line) for line in expected["depth_002/seed_0/metrics.jsonl"].decode().splitlines()]
    assert lines[-1]["step"] == 20
    assert [json.loads(line)["step"] for line in expected["depth_002/seed_0/train_log.jsonl"].decode().splitlines()] \
        == [5, 10, 15, 20]
    events = expected["depth_002/seed_0/tensorboard/eval/<events>"]
    assert {(step, tag) for step, tag, _, _ in events} >= {(line["step"], "eval/nc1_quotient") for line in lines}
    assert expected["depth_002/seed_0/tensorboard/train/<events>"]
    assert expected["depth_002/seed_0/tensorboard/eval/hparams/<events>"]


@pytest.mark.slow  # two re-evaluations, each redrawing every figure: about 30 s on 2 shared cores
def test_reevaluation_on_an_object_store_equals_a_local_one(trained, store):
    """Re-evaluation rewrites metrics.jsonl, the eval dashboards (removed, then written anew), the summary and
    the figures: on the store as locally."""
    _reevaluate(trained)
    _reevaluate(REMOTE)
    again = _compare(store, trained, f"{BUCKET}/runs/quick/")
    steps = [json.loads(line)["step"] for line in again["depth_002/seed_0/metrics.jsonl"].decode().splitlines()]
    assert steps[-1] == 20
    events = again["depth_002/seed_0/tensorboard/eval/<events>"]
    assert [step for step, tag, _, _ in events if tag == "eval/nc1_quotient"] == steps  # written anew, once
