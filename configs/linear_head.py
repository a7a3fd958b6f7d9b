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

The optimiser (``adam`` by default). Under gradient flow on loss + λ‖θ‖² the imbalance
W_{l+1}ᵀW_{l+1} − W_l W_lᵀ − b_l b_lᵀ of every linear pair decays like e^{−4λt}; Adam's
preconditioning breaks that law, plain gradient descent keeps it. ``sgd`` (momentum 0, η = 0.05,
T = 15,000) and ``momentum`` (heavy ball, β = 0.9, η = 0.02, T = 4,000) advance the flow time
t by η/(1−β) a step, 750 and 800 in all: 4λt = 3 and 3.2 at λ = 10⁻³, 6 and 6.4 at
λ = 2·10⁻³ (e^{−3} ≈ 0.05). Plain steps of 0.1 diverge at m = 8, hence the longer run. Both
train full-batch on a 10-class Gaussian mixture (d = 32, 200 samples, width 32: MNIST's 784
inputs made 15,000 steps per head depth too slow for a CPU) and without biases before the
classifier (``model.use_bias=False``): b_l b_lᵀ need not vanish, so with biases the weights
alone need not balance.

    python -m ncjax.main --config=configs/linear_head.py
    python -m ncjax.main --config=configs/linear_head.py:sgd          # and :momentum
    python -m ncjax.main --config=configs/linear_head.py:resnet,quick
"""

from ncjax import config

PRESETS = {"features": ("mlp", "resnet"), "optimizer": ("adam", "sgd", "momentum"), "size": ("default", "quick")}
# (η, β, T) of the gradient-descent presets: 4λTη/(1−β) ≥ 3 at λ = 10⁻³.
PROTOCOLS = {"sgd": (0.05, 0.0, 15000), "momentum": (0.02, 0.9, 4000)}


def get_config(arg=None):
    p = config.parse_presets(arg, PRESETS)
    c = config.base_config()
    optimizer = "" if p["optimizer"] == "adam" else "_" + p["optimizer"]
    c.name = "linear_head_" + p["features"] + optimizer + ("_quick" if p["size"] == "quick" else "")
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
    if p["optimizer"] != "adam":
        gradient_descent(c, *PROTOCOLS[p["optimizer"]], quick=p["size"] == "quick")
    return c


def gradient_descent(c, learning_rate: float, momentum: float, steps: int, quick: bool) -> None:
    """Full-batch gradient descent at a constant step, no biases before the classifier, evaluated on a
    linear time grid (the imbalance decays exponentially in t)."""
    c.model.update(use_bias=False, width=32)
    c.data.update(source="gaussian_mixture", n_per_class=None)
    gm = c.data.gaussian_mixture
    gm.num_classes, gm.dim, gm.snr, gm.n_per_class_train, gm.n_per_class_test = 10, 32, 2.0, 20, 100
    c.train.update(optimizer="sgd", momentum=momentum, schedule="constant", learning_rate=learning_rate,
                   batch_size=200)
    if quick:
        c.train.steps = 300
        c.sweep = (("model.head_depth", (1, 2)), ("train.loss", ("ce",)), ("train.l2", (1e-3,)))
        c.checkpoint.every_steps = 300
        c.evaluate.every_steps = c.log_every_steps = 100
    else:
        c.train.steps = steps
        c.sweep = (("model.head_depth", (0, 1, 2, 4, 8)), ("train.loss", ("mse", "ce")), ("train.l2", (1e-3, 2e-3)))
        c.checkpoint.every_steps = steps
        c.evaluate.every_steps = c.log_every_steps = steps // 15 // 50 * 50
