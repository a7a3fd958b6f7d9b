"""ncjax: neural collapse at depth in JAX/Flax.

``ncjax.collapse`` measures collapse on any features (light: no flax, no optax);
``ncjax.load_run(workdir, depth=..., seed=...)`` opens one trained run of a workdir.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "load_run":  # imported on use: `import ncjax` stays light
        from ncjax.runs import load_run

        return load_run
    raise AttributeError(f"module 'ncjax' has no attribute {name!r}")
