"""Features a user already has, from ``.npz``, ``.npy`` or ``.safetensors`` files, memory-mapped where the format allows.

``.npy`` files open with ``np.load(mmap_mode='r')``; arrays stored uncompressed
in an ``.npz`` (``np.savez``) are memory-mapped at their offset inside the zip,
so files larger than memory stream chunk by chunk. Compressed members
(``np.savez_compressed``) must be decompressed into memory, and so are
``.safetensors`` files (PyTorch users' format), read with the ``safetensors``
package's numpy API (no torch needed), which is imported only for them.
"""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ncjax import errors
from ncjax.collapse.inputs import finite, native

ARRAY_NAMES = ("features", "labels", "weight", "bias", "ood_features")


class FeatureArrays(NamedTuple):
    """Arrays to measure (possibly memory-mapped)."""

    features: np.ndarray  # [N, D] or [L, N, D]
    labels: np.ndarray  # [N] integers
    weight: np.ndarray | None  # [K, D]
    bias: np.ndarray | None  # [K]
    ood_features: np.ndarray | None  # [M, D] or [L, M, D]
    ignored: tuple[str, ...]  # arrays in an .npz that none of ARRAY_NAMES matches


def _mapped_member(path: Path, info: zipfile.ZipInfo) -> np.ndarray:
    """An uncompressed .npz member as a read-only memmap (no bytes read beyond its header)."""
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)
        if local[:4] != b"PK\x03\x04":
            raise errors.DataError(f"{path}: member {info.filename} has a damaged zip header")
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        f.seek(info.header_offset + 30 + name_len + extra_len)
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(f)
        offset = f.tell()
    if dtype.hasobject:
        raise errors.DataError(f"{path}: array {info.filename[:-4]!r} holds Python objects; save numbers only")
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    arrays = {}
    with zipfile.ZipFile(path) as archive:
        members = [info for info in archive.infolist() if info.filename.endswith(".npy")]
    compressed = None
    for info in members:
        name = info.filename[:-4]
        if info.compress_type == zipfile.ZIP_STORED:
            arrays[name] = _mapped_member(path, info)
        else:
            compressed = compressed if compressed is not None else np.load(path, allow_pickle=False)
            arrays[name] = compressed[name]
    return arrays


def _read_npy(path: Path) -> np.ndarray:
    return np.load(path, mmap_mode="r", allow_pickle=False)


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    try:
        from safetensors import SafetensorError
        from safetensors.numpy import load_file
    except ImportError as error:
        raise errors.DataError(f"reading {path} needs the safetensors package: install safetensors "
                               "(pip install safetensors)") from error
    try:
        return load_file(path)
    except (SafetensorError, TypeError, ValueError, OSError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        hint = "; save float32 (tensor.float())" if "bfloat16" in reason else ""
        raise errors.DataError(f"cannot read {path} as .safetensors: {reason}{hint}") from error


def read_array(path: str | Path) -> np.ndarray | dict[str, np.ndarray]:
    """One ``.npy`` array or the arrays of one ``.npz`` or ``.safetensors``; a one-line DataError for
    anything unreadable."""
    path = Path(path)
    if not path.is_file():
        raise errors.DataError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic != np.lib.format.MAGIC_PREFIX and not zipfile.is_zipfile(path):
        raise errors.DataError(f"{path} is neither an .npy nor an .npz file (save arrays with np.save or np.savez, "
                               "or torch tensors with safetensors.torch.save_file as NAME.safetensors)")
    try:
        return _read_npz(path) if zipfile.is_zipfile(path) else _read_npy(path)
    except errors.DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError, struct.error) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise errors.DataError(f"cannot read {path} as .npz or .npy: {reason}") from error


def load(paths: list[str], weight: str | None = None, bias: str | None = None,
         ood_features: str | None = None) -> FeatureArrays:
    """``[features.npz]`` or ``[features.safetensors]`` (arrays named as in ``ARRAY_NAMES``) or
    ``[features.npy, labels.npy]``; separate ``.npy`` files for ``weight``, ``bias``, ``ood_features``
    override the archive's. Labels must be finite integers; big-endian arrays come back in native order."""
    if len(paths) == 1:
        arrays = read_array(paths[0])
        if not isinstance(arrays, dict):
            raise errors.DataError(f"{paths[0]} is one .npy array; give the labels too: FEATURES.npy LABELS.npy, "
                                   "or an .npz or .safetensors with arrays 'features' and 'labels'")
        missing = [name for name in ("features", "labels") if name not in arrays]
        if missing:
            raise errors.DataError(f"{paths[0]} lacks array(s) {missing}; it holds {sorted(arrays)} "
                                   f"(expected names: {', '.join(ARRAY_NAMES)})")
    elif len(paths) == 2:
        arrays = {"features": read_array(paths[0]), "labels": read_array(paths[1])}
        for path, name in zip(paths, ("features", "labels")):
            if isinstance(arrays[name], dict):
                raise errors.DataError(f"{path} holds several arrays; with two files give FEATURES.npy LABELS.npy")
    else:
        raise errors.DataError(f"give FEATURES.npz, or FEATURES.npy LABELS.npy; got {len(paths)} paths")
    for name, path in (("weight", weight), ("bias", bias), ("ood_features", ood_features)):
        if path is not None:
            value = read_array(path)
            if isinstance(value, dict):
                raise errors.DataError(f"{path}: give the {name} as one .npy array")
            arrays[name] = value
    labels = native(np.asarray(arrays["labels"]))
    if np.issubdtype(labels.dtype, np.inexact):
        finite("labels", labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise errors.DataError(f"labels must be a 1-D integer array; got shape {list(labels.shape)} "
                               f"and dtype {labels.dtype} (save them as integers, e.g. labels.astype(np.int64))")
    return FeatureArrays(
        features=arrays["features"], labels=labels, weight=arrays.get("weight"),
        bias=arrays.get("bias"), ood_features=arrays.get("ood_features"),
        ignored=tuple(sorted(set(arrays) - set(ARRAY_NAMES))))
