"""The setup a figure shows, in title lines read from the workdir's config.json.

A reader must know what was trained without the config file: model (architecture, where the
LayerNorm sits, width, depths), data (source and training-set size), how long (steps and
epochs actually reached), the objective (loss, λ and its schedule and form) and the optimiser
(learning rate and its schedule). A value that varies within the figure (a sweep axis) is
written as the set of its values; a panel's own value replaces the stored one.
"""

from __future__ import annotations

import copy
import textwrap
from typing import Any

MODELS = {"rn1": "L-RN1", "rn2": "L-RN2", "t11": "L-T11", "t12": "L-T12", "mlp": "ReLU MLP"}
NORMS = {"post": "LayerNorm after every block", "pre": "pre-LN blocks + final LN",
         "final": "one LayerNorm before the classifier"}
DATA = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST", "cifar10": "CIFAR-10", "cifar100": "CIFAR-100",
        "imdb_reviews": "IMDB reviews"}
L2_FORMS = {"full": "λ‖θ‖²", "half": "(λ/2)‖θ‖²", "decoupled": "decoupled weight decay λ"}
SCHEDULES = {"constant": "constant", "cosine": "cosine decay to 0", "warmup_cosine": "cosine decay to 0"}
MNIST_5K = 500  # images per class of the embedded subset


def _text(value) -> str:
    if isinstance(value, (list, tuple)):
        return "{" + ", ".join(map(_text, value)) + "}"
    if isinstance(value, float):
        return f"{value:g}"
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)


def _with(config: dict, values: dict[str, Any]) -> dict:
    """``config`` with each dotted key set (depth is ``model.depth``)."""
    out = copy.deepcopy(config)
    for key, value in values.items():
        *parents, name = ("model.depth" if key == "depth" else key).split(".")
        node = out
        for parent in parents:
            node = node.setdefault(parent, {})
        node[name] = value
    return out


def model(c: dict) -> str:
    m = c.get("model", {})
    name = m.get("name", "rn1")
    text = MODELS.get(name, name)
    if name == "mlp" and m.get("activation", "relu") != "relu":
        text = f"{m['activation']} MLP"
    if name != "mlp":
        norm = NORMS.get(m.get("norm", "post"), m.get("norm"))
        text += f", {norm} ({'affine' if m.get('norm_affine') else 'parameter-free'})"
    text += f", width {_text(m.get('width'))}, L = {_text(m.get('depth'))}"
    if m.get("head_depth"):
        text += f", {_text(m['head_depth'])} linear head layers"
    return text


def data(c: dict) -> str:
    d, classes = c.get("data", {}), c.get("model", {}).get("num_classes")
    source = d.get("source", "mnist_5k")
    per_class = d.get("n_per_class")
    if source == "mnist_5k":
        name, per_class = "MNIST (embedded 5k subset)", per_class or MNIST_5K
    elif source in ("gaussian_mixture", "synthetic_sequences"):
        g = d.get(source, {})
        classes, per_class = g.get("num_classes", classes), per_class or g.get("n_per_class_train")
        name = (f"Gaussian mixture (dim {_text(g.get('dim'))}, SNR {_text(g.get('snr'))})"
                if source == "gaussian_mixture" else f"synthetic sequences (length {_text(g.get('length'))})")
    elif source.startswith("tfds:"):
        name = DATA.get(source[5:], source[5:]) + " (TFDS)"
    elif source.startswith("idx:"):
        name = source.rstrip("/").rsplit("/", 1)[-1] + " (IDX files)"
    else:
        name = source
    if per_class is None or classes is None:
        return f"{name}, full training set"
    if isinstance(per_class, (list, tuple)) or isinstance(classes, (list, tuple)):
        return f"{name}, {_text(per_class)} per class × {_text(classes)} classes"
    return f"{name}, {per_class * classes:,} training examples ({per_class:,} per class × {classes})"


def length(c: dict, step: int | None, epoch: float | None) -> str:
    t = c.get("train", {})
    trained = (f"{step:,} steps ({_epochs(epoch)} epochs)" if step is not None and epoch is not None
               else f"{_text(t['steps'])} steps" if t.get("steps") else f"{_text(t.get('epochs'))} epochs")
    return f"{trained}, batch {_text(t.get('batch_size'))}"


def objective(c: dict) -> str:
    t = c.get("train", {})
    l2 = f"λ = {_text(t.get('l2'))}" + ("/L" if t.get("l2_schedule") == "inverse_depth" else "")
    penalty = L2_FORMS.get(t.get("l2_form", "full"), t.get("l2_form"))
    if t.get("l2_params") == "weights":
        penalty += " on weights only"
    loss = {"ce": "CE", "mse": "MSE"}.get(t.get("loss"), t.get("loss"))
    return f"{loss} + {penalty}, {l2}"


def optimiser(c: dict) -> str:
    t = c.get("train", {})
    name = "Adam" if t.get("optimizer") == "adam" else f"SGD (momentum {_text(t.get('momentum'))})"
    schedule = SCHEDULES.get(t.get("schedule"), t.get("schedule"))
    if t.get("schedule") == "warmup_cosine":  # warm-up steps count only in this schedule (ncjax.train)
        schedule = f"{_text(t.get('warmup_steps'))} warm-up steps + {schedule}"
    return f"{name}, lr {_text(t.get('learning_rate'))} {schedule}"


def _epochs(epoch: float) -> str:
    """'5,000' (not '5e+03') for many epochs, '2.5' for a fraction of a few."""
    return f"{epoch:,.0f}" if epoch >= 100 or float(epoch).is_integer() else f"{epoch:.3g}"


def describe(config: dict, values: dict[str, Any], step: int | None = None, epoch: float | None = None) -> list[str]:
    """The setup in five parts: model, data, length, objective, optimiser. ``values``: the sweep axes as
    this figure has them (a list where it varies, one value in a panel of one); ``step``/``epoch``: the
    training the figure's runs reached."""
    c = _with(config, values)
    return [model(c), data(c), length(c, step, epoch), objective(c), optimiser(c)]


def title(setup: list[str], caption: list[str], width: float) -> str:
    """The setup's parts joined by ' · ', then the caption's by '; ', each into as few lines as fit a figure
    ``width`` inches wide (a part longer than a line is wrapped)."""
    chars = int(width * 14)  # about 15 characters of 9.5-point text per inch, less a margin

    def pack(parts, joint):
        lines = []
        for part in parts:
            if lines and len(lines[-1]) + len(joint) + len(part) <= chars:
                lines[-1] += joint + part
            else:
                lines += textwrap.wrap(part, chars) or [""]
        return lines

    return "\n".join(pack(setup, " · ") + pack(caption, "; "))
