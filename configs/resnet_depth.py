"""L-RN1 / L-RN2 residual networks with LayerNorm: collapse against depth (science.md §2).

    python -m ncjax.main --config=configs/resnet_depth.py                  # L-RN1, ~10 min on 2 CPU cores
    python -m ncjax.main --config=configs/resnet_depth.py:rn2_inverse,quick
    python -m ncjax.main --config=configs/resnet_depth.py:rn2,paper

The argument after ':' is a comma-separated list of presets: a model (``rn1``: one
linear layer per block, constant λ; ``rn2``: two per block, constant λ;
``rn2_inverse``: two per block, λ/L as the paper prescribes) and a size
(``default``, ``quick`` ≤ 2 min, ``paper`` = the settings table of science.md §2 on
TFDS MNIST). The paper predicts collapse improving with depth for rn1 and
rn2_inverse, not for rn2. Blocks are ``h ← h + σ(W h + b)`` (``W2 σ(W1 h + b1)`` for
rn2) followed by one LayerNorm before the classifier (``model.norm='final'``);
``--config.model.norm=pre`` puts a LayerNorm inside every block instead.
"""

from ncjax import experiment

PRESETS = {"model": ("rn1", "rn2", "rn2_inverse"), "size": ("default", "quick", "paper")}


def get_config(arg=None):
    p = experiment.parse_presets(arg, PRESETS)
    c = experiment.base_config()
    c.name = "resnet_depth_" + p["model"] + ("" if p["size"] == "default" else "_" + p["size"])
    c.model.name = "rn1" if p["model"] == "rn1" else "rn2"
    c.model.norm = "final"
    c.train.l2_schedule = "inverse_depth" if p["model"] == "rn2_inverse" else "constant"
    if p["size"] == "default":
        c.depths = (2, 3, 5, 8, 13)
        c.seeds = (0, 1, 2)
        c.data.n_per_class = 100
        c.train.batch_size = 128
        c.train.epochs = 150
        c.checkpoint.every_steps = 500
    elif p["size"] == "paper":
        c.data.source = "tfds:mnist"
    experiment.apply_size(c, p["size"])
    return c
