"""L-RN1 / L-RN2 residual networks with LayerNorm: collapse against depth (docs/paper.md#reported-settings).

    python -m ncjax.main --config=configs/resnet_depth.py                  # L-RN1, ~10 min on 2 CPU cores
    python -m ncjax.main --config=configs/resnet_depth.py:rn2_inverse,quick
    python -m ncjax.main --config=configs/resnet_depth.py:rn1,paper,cifar  # the paper's headline L-RN1 panel

The argument after ':' is a comma-separated list of presets, one word per group:

- model: ``rn1`` (one linear layer per block, constant λ), ``rn2`` (two per block,
  constant λ), ``rn2_inverse`` (two per block, λ/L as the paper prescribes). The paper
  predicts collapse improving with depth for rn1 and rn2_inverse, not for rn2.
  ``rn2_lambda``: L-RN2 at the fixed depths 8 and 34 with λ swept over the values λ/L takes
  on the paper's depths, {0.005/L′ : L′ = 2 … 34} (vmapped with the seeds): whether NC2 on
  the classifier follows λ or depth (docs/reproduction.md).
- size: ``default``, ``quick`` (≤ 2 min), ``paper`` (the depths 2…34, 5 seeds, 5,000
  epochs, λ and learning rate that docs/paper.md#reported-settings lists; the optimiser, Adam, and the
  batch size, 128, are ncjax's choices: the paper reports neither).
- data: ``mnist`` (the embedded 5,000-image subset; TFDS MNIST with ``paper``), ``cifar``
  (TFDS ``cifar10``, the data of the paper's headline L-RN1 panel), ``fashion`` (full
  Fashion-MNIST as IDX files: Debian/Ubuntu ``apt-get install dataset-fashion-mnist``).
- norm: ``post_ln`` (default): ``h ← LN(h + σ(W h + b))`` (``LN(h + W2 σ(W1 h + b1))`` for
  two-layer blocks), the theory's most likely reading (an inference, docs/paper.md#architectures);
  ``nonpaper_final_ln``: bare blocks ``h ← h + σ(W h + b)`` and one LayerNorm before the
  classifier, ncjax's earlier default, which departs from the theory (the residual stream
  grows about 1.4× per block at initialisation).
- l2: ``full_l2`` (default, λ‖θ‖²) or ``half_l2`` ((λ/2)‖θ‖²): the paper's convention is
  not known (docs/paper.md#what-is-not-known).
- ln: ``free_ln`` (default): parameter-free LayerNorm, as in the theory (features of radius
  √width, the convention of ncjax.models.layers and ncjax.ufm); ``nonpaper_affine_ln``: a
  learnable, L2-penalised scale and shift.
"""

from ncjax import config

PRESETS = {"model": ("rn1", "rn2", "rn2_inverse", "rn2_lambda"), "size": ("default", "quick", "paper"),
           "data": ("mnist", "cifar", "fashion"), "norm": ("post_ln", "nonpaper_final_ln"),
           "ln": ("free_ln", "nonpaper_affine_ln"), "l2": ("full_l2", "half_l2")}
DATA_SOURCES = {"cifar": "tfds:cifar10", "fashion": "idx:/usr/share/datasets/fashion-mnist"}


def get_config(arg=None):
    p = config.parse_presets(arg, PRESETS)
    c = config.base_config()
    c.name = "resnet_depth_" + p["model"] + "".join(f"_{p[g]}" for g in PRESETS if g != "model"
                                                    and p[g] != PRESETS[g][0])
    c.model.name = "rn1" if p["model"] == "rn1" else "rn2"
    c.model.norm = "final" if p["norm"] == "nonpaper_final_ln" else "post"
    c.model.norm_affine = p["ln"] == "nonpaper_affine_ln"
    c.train.l2_schedule = "inverse_depth" if p["model"] == "rn2_inverse" else "constant"
    c.train.l2_form = "half" if p["l2"] == "half_l2" else "full"
    if p["size"] == "default":
        c.depths = (2, 3, 5, 8, 13)
        c.seeds = (0, 1, 2)
        c.data.n_per_class = 100
        c.train.batch_size = 128
        c.train.epochs = 150
        c.checkpoint.every_steps = 500
    if p["data"] != "mnist":
        c.data.source = DATA_SOURCES[p["data"]]
    elif p["size"] == "paper":
        c.data.source = "tfds:mnist"
    config.apply_size(c, p["size"])
    if p["model"] == "rn2_lambda":
        c.depths = (8, 34) if p["size"] != "quick" else (1, 4)
        divisors = (2, 8, 34) if p["size"] == "quick" else config.PAPER_DEPTHS
        c.sweep = (("train.l2", tuple(round(c.train.l2 / depth, 8) for depth in divisors)),)
        c.summary.slope_axis = "train.l2"  # collapse against λ, one line per depth: does NC2 on W follow λ?
    return c
