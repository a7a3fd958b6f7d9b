"""What every ncjax command shares: the exit statuses of ``ncjax.errors`` and one-line user errors.

A user error (:class:`ncjax.errors.UserError`) prints one line and exits 2; a
diverged run exits 3; a preempted one 0 after saving. Anything else is not
caught here: Python prints its traceback and exits 1, so a launcher retries it.
Imported by the command entry points only, never by the library.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Callable

import jax
from absl import flags

from ncjax import configs, errors


def enable_compilation_cache() -> None:
    """Keep compiled programs on disk: a resumed or repeated run skips XLA compilation.

    ``JAX_COMPILATION_CACHE_DIR`` wins; the default is ``~/.cache/ncjax/xla``.
    """
    if not jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", str(Path.home() / ".cache" / "ncjax" / "xla"))


def fail(message: str, status: int = errors.EXIT_USER) -> int:
    return errors.fail(message, status)


def run_guarded(fn: Callable[[], object]) -> int:
    """Run ``fn`` with the compilation cache on; map ``ncjax.errors`` to an exit status."""
    enable_compilation_cache()
    return errors.run_guarded(fn)


def workdir_flag(argv: list[str] | None, program: str) -> str:
    """The --workdir of a command that takes nothing else."""
    argv = sys.argv[1:] if argv is None else argv
    values = [a.split("=", 1)[1] for a in argv if a.startswith("--workdir=")]
    others = [a for a in argv if not a.startswith("--workdir=")]
    if len(values) != 1 or others:
        raise errors.WorkdirError(f"usage: python -m {program} --workdir=PATH (got: {' '.join(argv) or 'nothing'})")
    return values[0]


def packaged_config(argv: list[str]) -> list[str]:
    """``--config=vit_depth.py[:preset]`` from the installed package when no such file is here."""
    out = []
    for arg in argv:
        if arg.startswith("--config="):
            file, colon, preset = arg[len("--config="):].partition(":")
            packaged = configs.path(Path(file).name)
            if not Path(file).exists() and packaged.exists():
                arg = f"--config={packaged}{colon}{preset}"
        out.append(arg)
    return out


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing with errors as one line and status 2 (absl's own exits 1 with usage)."""
    argv = packaged_config(argv)
    try:
        rest = flags.FLAGS(argv)
        if "config" in flags.FLAGS and flags.FLAGS["config"].present:
            flags.FLAGS.config.to_dict()  # config files load lazily: surface their errors here
        return rest
    except Exception as error:  # noqa: BLE001  config files can raise anything while loading
        sys.exit(fail(_unknown_key(argv) or _last_line(error)))


def _last_line(error: Exception) -> str:
    """The informative line of an error that may carry a whole traceback as its message."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(("File ", "Traceback", "^", "The above"))]
    text = useful[-1] if useful else type(error).__name__
    text = re.sub(r"^[\w.]+(Error|Exception): ", "", text)  # the exception's class, printed by the config loader
    if "No such file or directory" in str(error):
        text = f"cannot load the config file: {text}"
    return text


def _unknown_key(argv: list[str]) -> str | None:
    """For a misspelt --config.a.b=v: name the key and list the valid ones beside it."""
    config = _load_config_quietly(argv)
    if config is None:
        return None
    for arg in argv:
        if not arg.startswith("--config."):
            continue
        node, path = config, arg.split("=", 1)[0][len("--config."):].split(".")
        for depth, key in enumerate(path):
            keys = list(node.keys()) if hasattr(node, "keys") else []
            if key not in keys:
                where = ".".join(path[:depth]) or "the config"
                return (f"unknown config key {'.'.join(path)!r}; valid keys of {where}: {', '.join(sorted(keys))}"
                        if keys else f"config key {'.'.join(path[:depth])!r} has no sub-keys")
            node = node[key]
    return None


def _load_config_quietly(argv: list[str]):
    import importlib.util

    paths = [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    if not paths:
        return None
    path, _, arg = paths[0].partition(":")
    try:
        spec = importlib.util.spec_from_file_location("_ncjax_config_probe", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.get_config(arg) if arg else module.get_config()
    except Exception:  # noqa: BLE001  the original error is reported instead
        return None
