"""L-T11 / L-T12 vision transformers: collapse against depth (science.md §2).

    python -m ncjax.main --config=configs/vit_depth.py            # ~10 min on 2 CPU cores
    python -m ncjax.main --config=configs/vit_depth.py:quick      # ≤ 2 min: tests, Colab
    python -m ncjax.main --config=configs/vit_depth.py:paper      # the paper's settings, TFDS MNIST

The argument after ':' is a comma-separated list of presets: one size
(``quick``, ``default`` or ``paper``), optionally an architecture (``t11`` or
``t12``) and a LayerNorm placement (``post`` or ``pre``), e.g.
``configs/vit_depth.py:quick,t12,pre``. Any value can then be overridden:
``--config.model.width=128 --config.depths='(2,4,8)'``.
"""

from ncjax import experiment

SIZES = ("quick", "default", "paper")
ARCHS = ("t11", "t12")
NORMS = ("post", "pre")


def parse(arg):
    """Split 'quick,t12,pre' into (size, arch, norm); unknown words are an error listing the valid ones."""
    size, arch, norm = "default", "t11", "post"
    for word in filter(None, (arg or "").split(",")):
        if word in SIZES:
            size = word
        elif word in ARCHS:
            arch = word
        elif word in NORMS:
            norm = word
        else:
            raise ValueError(
                f"unknown preset {word!r} in {arg!r}; valid: {', '.join(SIZES + ARCHS + NORMS)}")
    return size, arch, norm


def get_config(arg=None):
    size, arch, norm = parse(arg)
    c = experiment.base_config()
    c.name = "vit_depth" if size == "default" and arch == "t11" and norm == "post" else (
        f"vit_depth_{size}_{arch}_{norm}")
    c.model.name = arch
    c.model.norm = norm
    c.model.width = 64
    c.model.num_heads = 4
    c.model.patch_size = 7
    c.model.pooling = "cls"
    c.train.loss = "ce"
    c.train.optimizer = "adam"
    c.train.learning_rate = 0.005
    c.train.l2 = 0.005
    c.train.l2_schedule = "inverse_depth" if arch == "t12" else "constant"
    if size == "quick":
        c.depths = (1, 2, 4)
        c.seeds = (0, 1)
        c.data.n_per_class = 40
        c.train.batch_size = 64
        c.train.steps = 60
        c.checkpoint.every_steps = 30
        c.log_every_steps = 10
    elif size == "default":
        c.depths = (2, 3, 5, 8)
        c.seeds = (0, 1)
        c.data.n_per_class = 100
        c.train.batch_size = 128
        c.train.epochs = 60
        c.checkpoint.every_steps = 200
    else:  # paper: the settings table of science.md §2
        c.data.source = "tfds:mnist"
        c.depths = (2, 3, 5, 8, 13, 21, 34)
        c.seeds = (0, 1, 2, 3, 4)
        c.train.batch_size = 128
        c.train.epochs = 5000
        c.checkpoint.every_steps = 50_000
        c.checkpoint.max_to_keep = 3
    return c
