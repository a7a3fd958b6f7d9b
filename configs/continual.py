"""Continual learning with Progressive Neural Collapse (ProNC) against its baselines (docs/continual.md).

    python -m ncjax.main --config=configs/continual.py          # embedded MNIST subset, 5 tasks × 2 classes: minutes
    python -m ncjax.main --config=configs/continual.py:fashion  # Fashion-MNIST (IDX files), 400 images per class
    python -m ncjax.main --config=configs/continual.py:quick    # Gaussian mixture, 3 tasks × 2 classes: seconds
    python -m ncjax.main --config=configs/continual.py:paper    # Seq-CIFAR-10 through TFDS (tfds:cifar10)

``fashion`` reads ``idx:/usr/share/datasets/fashion-mnist`` (Debian's dataset-fashion-mnist;
``--config.data.source=idx:<folder>`` for another copy) and keeps 400 training images per
class, as many as the MNIST subset, so the two compare at one size and fit a CPU; the test
split stays whole (1,000 per class).

Every method (``continual.methods``: pronc, pronc_replay, fixed_etf, fixed_etf_ce,
finetune, finetune_replay; see ``ncjax/continual/methods.py``) trains one model per seed task
after task, in every scenario (``continual.scenarios``: class_incremental,
task_incremental). The workdir gets one folder per (method, scenario) with
``seed_<n>/metrics.jsonl`` (one line per task: accuracy on every task seen, average
accuracy, forgetting, collapse of the seen classes), ``summary.csv`` and
``continual.png``. Rerunning the same command resumes. Any value can be overridden,
e.g. ``--config.continual.methods="('pronc', 'finetune')"``.

``paper`` states the paper's settings as its official code runs them
(github.com/Continue-Edge-AI-Lab/ProNC, README and ``datasets/configs/seq-cifar10``):
SGD without momentum or weight decay, lr 0.03, batch 32, 50 epochs per task,
``--main_weight 18 --distill_weight 170 --buffer_size 200``, ResNet-18. Differences
here: ncjax has no convolutional ResNet-18 (a small ViT, ``t11``, stands in), no data
augmentation (the paper's random crop and flip), and a constant learning rate instead
of the README's multi-step schedule (milestones 35 and 45 for 50 epochs).
"""

from ncjax import config
from ncjax.continual import config as continual_config

PRESETS = {"setting": ("default", "fashion", "quick", "paper")}
ALL_METHODS = ("pronc", "pronc_replay", "fixed_etf", "fixed_etf_ce", "finetune", "finetune_replay")
FASHION_MNIST = "idx:/usr/share/datasets/fashion-mnist"


def get_config(arg=None):
    setting = config.parse_presets(arg, PRESETS)["setting"]
    c = continual_config.base_config()
    c.name = "continual" if setting == "default" else f"continual_{setting}"
    k, t = c.continual, c.train
    if setting in ("default", "fashion"):  # the embedded MNIST subset (400 training, 100 test images per class)
        if setting == "fashion":  # or Fashion-MNIST cut to the same 400 training images per class
            c.data.source, c.data.n_per_class = FASHION_MNIST, 400
        c.seeds = (0, 1, 2)
        c.model.width = 64
        k.methods = ALL_METHODS
        t.epochs = 5
        c.checkpoint.every_steps = 100
        c.log_every_steps = 25
    elif setting == "quick":  # seconds: a Gaussian mixture of 6 classes in 3 tasks, a width-16 model
        c.seeds = (0, 1)
        c.data.source = "gaussian_mixture"
        c.data.gaussian_mixture.num_classes = 6
        c.data.gaussian_mixture.dim = 16
        c.data.gaussian_mixture.n_per_class_train = 32
        c.data.gaussian_mixture.n_per_class_test = 16
        c.data.gaussian_mixture.snr = 1.0
        c.model.depth = 1
        c.model.width = 16
        k.num_tasks = 3
        k.methods = ("pronc_replay", "fixed_etf", "finetune")
        k.scenarios = ("class_incremental",)
        k.buffer_size = 12
        t.batch_size = 16
        t.steps = 12
        c.checkpoint.every_steps = 4
        c.log_every_steps = 4
        c.eval_batch_size = 64
        c.progress = False
    else:  # paper: Seq-CIFAR-10 (5 tasks of 2 classes) as the official code runs it
        c.seeds = (0, 1, 2)
        c.data.source = "tfds:cifar10"
        c.model.name = "t11"
        c.model.norm = "pre"
        c.model.depth = 6
        c.model.width = 256
        c.model.num_heads = 4
        c.model.patch_size = 4
        c.model.pooling = "mean"
        k.methods = ALL_METHODS
        t.epochs = 50
        c.checkpoint.every_steps = 2000
        c.checkpoint.max_to_keep = 3
        c.log_every_steps = 100
    return c
