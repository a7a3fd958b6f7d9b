"""Collapse against the training loss and the gradient norm during training (docs/paper.md#collapse-against-loss-and-gradient-norm-wu--mondelli).

Wu & Mondelli (arXiv 2501.19104) analyse a three-layer network (two layers in the mean-field
regime, then a linear layer) trained with MSE: points of small empirical loss and small
gradient norm are approximately NC1-collapsed, the closeness controlled by the two, and
gradient flow reaches such points; on well-separated data NC1 and a vanishing test error
come together.

The run: a three-layer tanh network (``model.name='mlp'``, two hidden layers of width 256,
then the classifier) trained with MSE + λ‖θ‖² by full-batch gradient descent (a batch of the
whole training set, a constant step) on a well-separated Gaussian mixture, evaluated every
200 steps (``evaluate.every_steps``): NC1, the training loss and the full-batch gradient norm
of the objective (the ``gradient_norm`` evaluator). ``collapse_vs_loss.png`` draws NC1
against both along training, ``collapse_vs_steps.png`` against time.

Why these numbers: the gradient norm is held up by weight decay pulling on the weight
directions the data never constrain, which shrink like e^{−2λt} in gradient-flow time t
(Σ η/(1−β) over the steps). ReLU, plain steps of 0.05 and λ = 10⁻⁴ stall at 0.02–0.04
(≈ 2λ‖θ‖) after 4,000 steps, and steps of 0.1 diverge. Heavy-ball momentum 0.9 (t grows by
0.2 a step) and λ = 3·10⁻³ shrink those directions in ~5,000 steps; ReLU then stops at
~10⁻³ with a constant or a cosine-decayed step alike (its kinks: the computed gradient does
not vanish at the minimum), tanh keeps falling. Width 256 keeps 16,000 steps to minutes on
a CPU. The network uses ncjax's standard parametrisation, not the paper's mean-field scaling.

    python -m ncjax.main --config=configs/training_dynamics.py
    python -m ncjax.main --config=configs/training_dynamics.py:quick
"""

from ncjax import config

PRESETS = {"size": ("default", "quick")}


def get_config(arg=None):
    p = config.parse_presets(arg, PRESETS)
    c = config.base_config()
    c.name = "training_dynamics" + ("_quick" if p["size"] == "quick" else "")
    c.model.update(name="mlp", width=256, activation="tanh")
    c.depths = (2,)
    c.data.source = "gaussian_mixture"
    gm = c.data.gaussian_mixture
    gm.num_classes, gm.dim, gm.snr, gm.n_per_class_train, gm.n_per_class_test = 4, 16, 2.0, 64, 250
    c.train.update(loss="mse", optimizer="sgd", momentum=0.9, schedule="constant", learning_rate=0.02,
                   l2=3e-3, batch_size=256)
    c.evaluate.update(every_steps=200, evaluators=c.evaluate.evaluators + ("gradient_norm",))
    c.log_every_steps = 200
    c.summary.min_train_accuracy = 0.0
    if p["size"] == "quick":
        c.seeds = (0, 1)
        c.model.width = 64
        c.train.steps = 100
        c.evaluate.every_steps = c.log_every_steps = 25
        c.checkpoint.every_steps = 100
    else:
        c.seeds = (0, 1, 2)
        c.train.steps = 16000
        c.checkpoint.every_steps = 4000
    return c
