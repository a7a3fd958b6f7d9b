"""Shallow ReLU networks on Gaussian mixtures: when is the regularised optimum collapsed? (docs/paper.md#shallow-networks-and-snr-hong--ling)

Hong & Ling (arXiv 2409.01832) study 2- and 3-layer ReLU networks trained with weight decay
on general data: whether the optimum is neurally collapsed depends on the data's dimension,
its sample size and its signal-to-noise ratio, and collapse and generalisation can disagree
when the SNR is low (the training features collapse while the test accuracy stays poor).

The sweep: a 2-layer (``depths=(1,)``: one hidden layer) and a 3-layer (``2``) ReLU network
(``model.name='mlp'``) on K-class Gaussian mixtures (``data.source='gaussian_mixture'``:
class means on the sphere of radius SNR·√d, unit Gaussian noise, so SNR = ‖μ‖ / RMS‖noise‖),
over the SNR, the training samples per class, the input dimension and the width. Every run
records the collapse metrics of its hidden features and its test accuracy (fresh samples
of the same mixture): ``summary.csv`` has one row per run; ``slopes.csv`` and
``nc_vs_snr-*.png`` show collapse against the SNR for every (depth, n, d, width). The
regime to look for: low SNR, where the training accuracy reaches 1 and NC1 is small while
the test accuracy is near chance. The four SNRs and the seeds of a (depth, n, d, width) point
train in one program (the SNR is a number of the program, like a seed: ``ncjax.plan``).

    python -m ncjax.main --config=configs/shallow_snr.py            # 32 points × 2 seeds, minutes on a CPU
    python -m ncjax.main --config=configs/shallow_snr.py:fine       # 11 SNRs from 0.03 to 10 × 3 seeds, 3 layers,
                                                                    # d = 64: where collapse and accuracy part
    python -m ncjax.main --config=configs/shallow_snr.py:width      # widths 64 … 4,096 at SNR 0.1 and 3, 2 and 3
                                                                    # layers, d = 64, 100 samples per class
    python -m ncjax.main --config=configs/shallow_snr.py:quick      # seconds (the tests)

``width`` puts the width on the slope axis (``nc_vs_width-*.png``, one figure per depth and
SNR, collapse and accuracy side by side; ``slopes.csv`` against the width): the variable of
the paper's "the first layer wide enough" (3 layers) and of its claim that the 2-layer
condition does not involve the width. The 3-layer network at widths 2,048 and 4,096 dominates
the cost (a W×W layer: about 0.15 and 0.6 s per step for the four members on a busy 2-core
CPU, against 0.04 s at 1,024); on a CPU run ``--config.depths='(1,)'`` for all widths and the
3-layer network up to 1,024 (docs/reproduction.md).

CE with λ‖θ‖², Adam, full-batch-sized minibatches: ncjax's choices for this study (the
paper's theory concerns global optima, not an optimiser).
"""

from ncjax import config

PRESETS = {"size": ("default", "fine", "width", "quick")}
FINE_SNRS = (0.03, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0)
WIDTHS = (64, 128, 256, 512, 1024, 2048, 4096)  # past the 400 training samples of the width preset


def get_config(arg=None):
    p = config.parse_presets(arg, PRESETS)
    c = config.base_config()
    c.name = "shallow_snr" + ("" if p["size"] == "default" else f"_{p['size']}")
    c.model.name = "mlp"
    c.data.source = "gaussian_mixture"
    gm = c.data.gaussian_mixture
    gm.num_classes, gm.n_per_class_test = 4, 250
    c.train.update(learning_rate=0.003, l2=5e-4, batch_size=40, schedule="cosine")
    c.summary.slope_axis = "model.width" if p["size"] == "width" else "data.gaussian_mixture.snr"
    c.summary.min_train_accuracy = 0.0  # the point is what happens when the training set cannot be separated
    if p["size"] == "quick":
        c.depths, c.seeds = (1,), (0, 1)
        c.model.width = 32
        c.sweep = (("data.gaussian_mixture.snr", (0.3, 3.0)),)
        gm.dim, gm.n_per_class_train = 8, 20
        c.train.steps = 60
        c.checkpoint.every_steps = 60
        c.log_every_steps = 20
    else:
        if p["size"] == "fine":  # one program per sample size: the SNRs and seeds are its members
            c.depths, c.seeds = (2,), (0, 1, 2)
            c.sweep = (("data.gaussian_mixture.snr", FINE_SNRS),
                       ("data.gaussian_mixture.n_per_class_train", (10, 100)),
                       ("data.gaussian_mixture.dim", (64,)),
                       ("model.width", (256,)))
        elif p["size"] == "width":  # the width their 'wide enough' condition is about, at a low and a high SNR
            c.depths, c.seeds = (1, 2), (0, 1)
            c.sweep = (("model.width", WIDTHS), ("data.gaussian_mixture.snr", (0.1, 3.0)))
            gm.dim, gm.n_per_class_train = 64, 100
            # The UFM distance takes the SVD of a width × width matrix: minutes per evaluation at 4,096.
            c.evaluate.evaluators = tuple(e for e in c.evaluate.evaluators if e != "ufm")
        else:
            c.depths, c.seeds = (1, 2), (0, 1)
            c.sweep = (("data.gaussian_mixture.snr", (0.1, 0.3, 1.0, 3.0)),
                       ("data.gaussian_mixture.n_per_class_train", (10, 100)),
                       ("data.gaussian_mixture.dim", (8, 64)),
                       ("model.width", (256,)))
        c.train.epochs = 400
        c.checkpoint.every_steps = 2000
        c.evaluate.every_steps = 200  # collapse along training too (small nets: cheap)
        c.log_every_steps = 100
    return c
