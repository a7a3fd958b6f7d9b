"""L-T11 / L-T12 vision transformers: collapse against depth (science.md §2).

    python -m ncjax.main --config=configs/vit_depth.py            # ~10 min on 2 CPU cores
    python -m ncjax.main --config=configs/vit_depth.py:quick      # ≤ 2 min: tests, Colab
    python -m ncjax.main --config=configs/vit_depth.py:paper      # the paper's settings, TFDS MNIST

The argument after ':' is a comma-separated list of presets: a size (``default``,
``quick`` or ``paper``), an architecture (``t11`` or ``t12``; L-T12 uses λ/L as the
paper does for two-layer blocks) and a LayerNorm placement (``pre``, the default, or
``post``), e.g. ``configs/vit_depth.py:quick,t12,post``. Pre-LN is the default because on
the CPU budget of the default size it shows the depth trend in every metric, post-LN only in
NC1 (measured: docs/reproduction.md). Any value can then be overridden:
``--config.model.width=128 --config.depths='(2,4,8)'``.
"""

from ncjax import experiment

PRESETS = {"size": ("default", "quick", "paper"), "arch": ("t11", "t12"), "norm": ("pre", "post")}


def get_config(arg=None):
    p = experiment.parse_presets(arg, PRESETS)
    c = experiment.base_config()
    c.name = "vit_depth" + "".join(f"_{p[g]}" for g in PRESETS if p[g] != PRESETS[g][0])
    c.model.name = p["arch"]
    c.model.norm = p["norm"]
    c.model.num_heads = 4
    c.model.patch_size = 7
    c.model.pooling = "cls"
    c.train.l2_schedule = "inverse_depth" if p["arch"] == "t12" else "constant"
    if p["size"] == "default":
        c.depths = (2, 3, 5, 8)
        c.seeds = (0, 1)
        c.data.n_per_class = 100
        c.train.batch_size = 128
        c.train.epochs = 100
        c.checkpoint.every_steps = 350
    elif p["size"] == "paper":
        c.data.source = "tfds:mnist"
    experiment.apply_size(c, p["size"])
    return c
