"""Networks that end in linear layers: collapse and balancedness against the depth m of the head.

Jacot, Súkeník, Wang & Mondelli (arXiv 2410.04887) prove that networks trained with weight
decay whose last layers are linear collapse: NC1 follows from a small training error and the
**balancedness** of the linear layers (``W_{l+1}ᵀW_{l+1} ≈ W_l W_lᵀ``), and NC2 strengthens
as the linear head gets deeper. Their experiments: MSE, MLPs and ResNets with an MLP head.

The sweep: MLP (default) or L-RN1 (``:resnet``) features followed by m ∈ {0, 1, 2, 4, 8}
linear layers of the same width (``model.head_depth``) and the classifier, trained with MSE
and CE, for two weight decays (λ trains vmapped with the seeds). Every checkpoint records
the collapse metrics and the ``balancedness`` of every consecutive pair of linear layers
(``balancedness_per_layer``; ``balancedness`` is their mean). ``nc_vs_head_depth-*.png``
plots collapse against m (m = 0 is drawn, not fitted: the axis is logarithmic).

    python -m ncjax.main --config=configs/linear_head.py
    python -m ncjax.main --config=configs/linear_head.py:resnet,quick
"""

from ncjax import config

PRESETS = {"features": ("mlp", "resnet"), "size": ("default", "quick")}


def get_config(arg=None):
    p = config.parse_presets(arg, PRESETS)
    c = config.base_config()
    c.name = "linear_head_" + p["features"] + ("_quick" if p["size"] == "quick" else "")
    if p["features"] == "mlp":
        c.model.name, c.depths = "mlp", (3,)
    else:
        c.model.name, c.depths = "rn1", (4,)
    c.train.update(learning_rate=0.002, batch_size=128, schedule="cosine")
    c.summary.slope_axis = "model.head_depth"
    if p["size"] == "quick":  # fits every run (≥ 99%) in about a minute: three head depths, two seeds
        c.seeds = (0, 1)
        c.model.width = 32
        c.data.n_per_class = 20
        # CE: MSE with Adam does not fit 200 images in 80 steps (the default preset runs both losses).
        c.sweep = (("model.head_depth", (1, 2, 4)), ("train.loss", ("ce",)), ("train.l2", (1e-3,)))
        c.train.update(steps=80, batch_size=64, learning_rate=0.005)
        c.checkpoint.every_steps = 40
        c.log_every_steps = 20
    else:
        c.seeds = (0, 1)
        c.data.n_per_class = 100
        c.sweep = (("model.head_depth", (0, 1, 2, 4, 8)), ("train.loss", ("mse", "ce")),
                   ("train.l2", (1e-3, 1e-4)))
        c.train.epochs = 200
        c.checkpoint.every_steps = 400
    return c
