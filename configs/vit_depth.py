"""L-T11 / L-T12 vision transformers: collapse against depth (docs/paper.md#reported-settings).

    python -m ncjax.main --config=configs/vit_depth.py            # ~10 min on 2 CPU cores
    python -m ncjax.main --config=configs/vit_depth.py:quick      # ≤ 2 min: tests, Colab
    python -m ncjax.main --config=configs/vit_depth.py:paper,cifar  # the paper's headline L-T11 panel

The argument after ':' is a comma-separated list of presets, one word per group:

- size: ``default``, ``quick`` or ``paper`` (the depths 2…34, 5 seeds, 5,000 epochs, λ and
  learning rate that docs/paper.md#reported-settings lists; the optimiser, Adam, and the batch size, 128,
  are ncjax's choices: the paper reports neither).
- arch: ``t11`` or ``t12`` (L-T12 uses λ/L as the paper does for two-layer blocks).
- data: ``mnist`` (the embedded 5,000-image subset; TFDS MNIST with ``paper``), ``cifar``
  (TFDS ``cifar10``, the data of the paper's headline L-T11 panel; 4×4 patches, 64 tokens:
  ncjax's choice), ``fashion`` (full Fashion-MNIST as IDX files: Debian/Ubuntu
  ``apt-get install dataset-fashion-mnist``).
- norm: ``post_ln`` (default): ``h ← LN(h + Attn(h)); h ← LN(h + MLP(h))``, the vision
  transformers' most likely reading (an inference, docs/paper.md#architectures); ``nonpaper_pre_ln``:
  pre-LN blocks plus a final LayerNorm, ncjax's earlier default, which departs from the
  paper's vision models (pre-LN is its text models' placement).
- ln: ``free_ln`` (default): parameter-free LayerNorm, as in the theory (features of radius
  √width); ``nonpaper_affine_ln``: a learnable, L2-penalised scale and shift.

E.g. ``configs/vit_depth.py:quick,t12,nonpaper_pre_ln``. Any value can then be overridden:
``--config.model.width=128 --config.depths='(2,4,8)'``.
"""

from ncjax import config

PRESETS = {"size": ("default", "quick", "paper"), "arch": ("t11", "t12"), "data": ("mnist", "cifar", "fashion"),
           "norm": ("post_ln", "nonpaper_pre_ln"), "ln": ("free_ln", "nonpaper_affine_ln")}
DATA_SOURCES = {"cifar": "tfds:cifar10", "fashion": "idx:/usr/share/datasets/fashion-mnist"}


def get_config(arg=None):
    p = config.parse_presets(arg, PRESETS)
    c = config.base_config()
    c.name = "vit_depth" + "".join(f"_{p[g]}" for g in PRESETS if p[g] != PRESETS[g][0])
    c.model.name = p["arch"]
    c.model.norm = "pre" if p["norm"] == "nonpaper_pre_ln" else "post"
    c.model.norm_affine = p["ln"] == "nonpaper_affine_ln"
    c.model.num_heads = 4
    c.model.patch_size = 4 if p["data"] == "cifar" else 7  # 32×32 or 28×28 images
    c.model.pooling = "cls"
    c.train.l2_schedule = "inverse_depth" if p["arch"] == "t12" else "constant"
    if p["size"] == "default":
        c.depths = (2, 3, 5, 8)
        c.seeds = (0, 1)
        c.data.n_per_class = 100
        c.train.batch_size = 128
        c.train.epochs = 100
        c.checkpoint.every_steps = 350
        # CPU-sized depths: unrolled blocks make the transformer step faster on a CPU
        # (benchmarks/cpu_transformer_step.py); compile time then grows with depth.
        c.model.scan = False
    if p["data"] != "mnist":
        c.data.source = DATA_SOURCES[p["data"]]
    elif p["size"] == "paper":
        c.data.source = "tfds:mnist"
    config.apply_size(c, p["size"])
    if p["size"] == "quick":
        c.depths = (2, 3, 4)  # a one-block transformer does not fit 200 images in 60 steps
    return c
