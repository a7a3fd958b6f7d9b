"""The unconstrained features model alone: solver against closed form over K, d and λ (docs/ufm.md).

    python -m ncjax.main --config=configs/ufm.py                  # CE, LayerNorm features, with bias
    python -m ncjax.main --config=configs/ufm.py:mse,free,nobias  # the classical MSE UFM (orthogonal frame)
    python -m ncjax.main --config=configs/ufm.py:quick            # one K, one d, one λ: seconds

The argument after ':' is a comma-separated list of presets: a size (``quick``
or ``default``), a loss (``ce`` or ``mse``), features (``layernorm``,
``sphere`` or ``free``) and ``bias`` / ``nobias``. The workdir gets config.json,
metrics.jsonl (one line per K, d, λ, seed), summary.csv and ufm_vs_l2.png. Any value can then be overridden,
e.g. ``--config.l2s='(1e-3,1e-2)'``.
"""

import ml_collections
from ml_collections import config_dict

from ncjax import config

PRESETS = {"size": ("default", "quick"), "loss": ("ce", "mse"), "features": ("layernorm", "sphere", "free"),
           "bias": ("bias", "nobias")}


def get_config(arg=None):
    p = config.parse_presets(arg, PRESETS)
    size, loss, features, bias = p["size"], p["loss"], p["features"], p["bias"]
    c = ml_collections.ConfigDict()
    c.kind = "ufm"  # python -m ncjax.main runs the UFM sweep (ncjax.ufm_sweep), not a depth sweep
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
    c.steps = 20000  # full-batch Adam steps
    return c
