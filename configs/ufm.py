"""The unconstrained features model alone: solver against closed form over K, d and λ (docs/ufm.md).

    configs/ufm.py                      # CE, LayerNorm-constrained features, with bias
    configs/ufm.py:mse,free,nobias      # the classical MSE UFM without bias (orthogonal frame)
    configs/ufm.py:quick                # one K, one d, one λ: seconds

The argument after ':' is a comma-separated list of presets: a size (``quick``
or ``default``), a loss (``ce`` or ``mse``), features (``layernorm``,
``sphere`` or ``free``) and ``bias`` / ``nobias``. ``ncjax.ufm.sweep(config)``
returns one record per (K, d, λ, seed). Any value can then be overridden,
e.g. ``--config.l2s='(1e-3,1e-2)'``.
"""

import ml_collections
from ml_collections import config_dict

SIZES = ("quick", "default")
LOSSES = ("ce", "mse")
FEATURES = ("layernorm", "sphere", "free")
BIASES = ("bias", "nobias")


def parse(arg):
    """Split 'mse,free,nobias' into (size, loss, features, bias); unknown words are an error."""
    size, loss, features, bias = "default", "ce", "layernorm", "bias"
    for word in filter(None, (arg or "").split(",")):
        if word in SIZES:
            size = word
        elif word in LOSSES:
            loss = word
        elif word in FEATURES:
            features = word
        elif word in BIASES:
            bias = word
        else:
            raise ValueError(f"unknown preset {word!r} in {arg!r}; valid: {', '.join(SIZES + LOSSES + FEATURES + BIASES)}")
    return size, loss, features, bias


def get_config(arg=None):
    size, loss, features, bias = parse(arg)
    c = ml_collections.ConfigDict()
    c.name = f"ufm_{loss}_{features}_{bias}" + ("_quick" if size == "quick" else "")
    c.loss = loss
    c.features = features  # layernorm: 1ᵀh = 0, ‖h‖ = r | sphere: ‖h‖ = r | free: + λ_H·mean‖h‖²
    c.bias = bias == "bias"
    c.bias_l2 = config_dict.placeholder(float)  # λ_b; None = the same λ as W (as in training)
    c.l2_h = 0.005 if features == "free" else 0.0  # λ_H, free features only
    c.radius = config_dict.placeholder(float)  # feature norm r; None = √width (LayerNorm without affine)
    c.mse_target_scale = 1.0
    c.num_classes = (4,) if size == "quick" else (2, 4, 10)
    c.widths = (16,) if size == "quick" else (16, 64)
    c.l2s = (0.005,) if size == "quick" else (0.001, 0.005, 0.05)  # λ_W (and λ_b unless bias_l2)
    c.seeds = (0,) if size == "quick" else (0, 1)
    c.samples_per_class = 2  # > 1, so that the solver shows within-class collapse (NC1)
    c.restarts = 4  # random starts per seed; the best is reported
    c.steps = 5000  # full-batch Adam steps
    return c
