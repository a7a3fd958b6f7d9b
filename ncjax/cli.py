"""The command line of ``ncjax.main``: absl flag parsing with one-line errors, packaged configs, the
compilation cache. Imported by ``ncjax.main`` only, never by the library (exit statuses: ``ncjax.errors``).
"""

from __future__ import annotations

import ast
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


def run_guarded(fn: Callable[[], object]) -> int:
    """Run ``fn`` with the compilation cache on; map ``ncjax.errors`` to an exit status."""
    enable_compilation_cache()
    return errors.run_guarded(fn)


def config_help() -> str:
    """The --config flag's help: the installed configs and their presets (read from the files, not run)."""
    lines = ["Experiment config file, configs/<name>.py[:preset,...] (or just <name>.py: the installed one).",
             "Installed configs and their presets (first of each group is the default):"]
    for file in sorted(configs.path("").glob("*.py")):
        if file.name.startswith("_"):
            continue
        presets = _presets(file)
        listed = "; ".join("|".join(words) for words in presets.values()) if presets else "no presets"
        lines.append(f"  {file.name}: {listed}")
    return "\n".join(lines)


def _presets(file: Path) -> dict[str, tuple[str, ...]]:
    for node in ast.parse(file.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "PRESETS" for t in node.targets):
            try:
                return ast.literal_eval(node.value)
            except ValueError:
                return {}
    return {}


def packaged_config(argv: list[str]) -> list[str]:
    """``--config=vit_depth.py[:preset]`` (or ``--config vit_depth.py``) from the installed package when no
    such file is here; the space form is joined into ``--config=...``."""
    out, args = [], iter(argv)
    for arg in args:
        if arg in ("--config", "-config"):
            arg = f"--config={next(args, '')}"
        if arg.startswith("--config="):
            file, colon, preset = arg[len("--config="):].partition(":")
            packaged = configs.path(Path(file).name)
            if file and not Path(file).exists() and packaged.exists():
                arg = f"--config={packaged}{colon}{preset}"
        out.append(arg)
    return out


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing with errors as one line and status 2 (absl's own exits 1 with usage)."""
    argv = packaged_config(argv)
    if any(arg in ("--help", "-h", "--helpshort", "--helpfull", "-?") for arg in argv[1:]):
        print(_help())
        sys.exit(errors.EXIT_OK)
    try:
        rest = flags.FLAGS(argv)
        if "config" in flags.FLAGS and flags.FLAGS["config"].present:
            flags.FLAGS.config.to_dict()  # config files load lazily: surface their errors here
        return rest
    except Exception as error:  # noqa: BLE001  config files can raise anything while loading
        sys.exit(errors.fail(_unknown_key(argv) or _last_line(error)))


def _help() -> str:
    """The command's docstring and the flags the front door defined for it (absl's own --help exits 1 and
    lists only the flags of ``__main__``)."""
    doc = (getattr(sys.modules.get("__main__"), "__doc__", None) or "").strip()
    modules = [m for m in flags.FLAGS.flags_by_module_dict() if m == "ncjax.main" or m.endswith("ncjax/main.py")
               or m == "__main__"]
    listed = "\n".join(flags.FLAGS.module_help(m) for m in modules)
    return f"{doc}\n\nflags (--name=value or --name value):\n{listed}\n"


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
