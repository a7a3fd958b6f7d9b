"""The model config: every field with its default, and the checks that reject bad values early.

Validation runs before any tracing so that a typo in ``--config.model.*`` fails
in one readable line instead of deep inside a Flax trace.
"""

from __future__ import annotations

import math

import ml_collections
from ml_collections import config_dict

from ncjax.errors import ConfigError
from ncjax.models.layers import ACTIVATIONS, PRECISIONS

NAMES = ("rn1", "rn2", "t11", "t12", "mlp")
RESNETS = ("rn1", "rn2")
NORMS = {"rn": ("pre", "post", "final"), "t": ("pre", "post"), "mlp": ()}  # plain MLPs have no LayerNorm
POOLINGS = ("cls", "mean")
INPUTS = {"rn": ("image", "vector"), "t": ("image", "tokens"), "mlp": ("image", "vector")}
DTYPES = ("float32", "bfloat16", "float16")
# The jax.checkpoint_policies entries that are policies themselves (the others are
# factories that need arguments, which a config string cannot carry).
REMAT_POLICIES = ("nothing_saveable", "dots_saveable", "dots_with_no_batch_dims_saveable",
                  "checkpoint_dots", "checkpoint_dots_with_no_batch_dims", "everything_saveable")


def default_config() -> ml_collections.ConfigDict:
    """Every model field, its default chosen by fidelity to the paper (width 64, L-RN1 with a
    parameter-free LayerNorm after every block: the most likely reading of docs/paper.md#architectures)."""
    c = ml_collections.ConfigDict()
    c.name = "rn1"  # rn1 | rn2 (L-RN1/L-RN2) | t11 | t12 (L-T11/L-T12) | mlp (plain ReLU network, mlp.py)
    c.depth = 8  # number of residual / transformer blocks L (mlp: hidden layers)
    c.width = 64  # d
    c.num_classes = 10
    c.activation = "relu"
    # post: LN after each residual add, none before the head (ResNets and vision transformers
    # as the theory reads, an inference). pre: LN on each branch's input plus one before the
    # head (the paper's text transformers). final (ResNets only): bare blocks h + σ(Wh + b),
    # one LN before the head (departs from the theory). Formulas: resnet.py, transformer.py.
    c.norm = "post"
    # False: the theory's parameter-free LayerNorm (zero mean, radius √width: layers.py).
    # True: a learnable scale and shift (a shift only with use_bias), L2-penalised like the rest.
    c.norm_affine = False
    c.use_bias = True  # biases of the embedding, blocks and linear head
    c.classifier_bias = True  # b in logits = W h + b (MSE optima differ with / without it)
    c.head_depth = 0  # m linear layers (width d, no activation) before the classifier
    c.init_scale = 1.0  # multiplies the std of LeCun-normal kernels
    c.dtype = "float32"  # compute dtype; params are always float32; bfloat16 is a deliberate choice
    # Matmul precision of every Dense/attention product: highest = exact float32 on every backend
    # (GPUs otherwise run float32 matmuls as TF32) | high | default (the backend's own, e.g. TF32).
    c.precision = "highest"
    c.num_heads = 4
    c.mlp_dim = config_dict.placeholder(int)  # hidden width of two-layer blocks; None = width
    c.patch_size = 7  # image transformers: square patches
    c.pooling = "cls"  # transformers: cls | mean
    c.input = "image"  # image [B,H,W,C] | vector [B,D] (ResNets) | tokens int [B,T] (transformers)
    c.vocab_size = 256  # tokens: bytes by default
    c.max_len = 512  # tokens: longest sequence (learned positions)
    # True: one traced block in a lax.scan (compile time independent of depth; fastest on GPUs).
    # False: L unrolled blocks (compile time grows with L; faster for small transformers on a CPU).
    # Neither this nor unroll/remat_* changes the parameters or the math: execution settings only.
    c.scan = True
    c.unroll = 1  # blocks per scan iteration
    # A jax.checkpoint_policies name; None = the backend's choice (models/execution.py: a CPU recomputes a
    # scanned transformer's blocks, nothing else does); everything_saveable = store every activation.
    c.remat_policy = config_dict.placeholder(str)
    # With scan and a remat_policy: also rematerialise groups of this many blocks (must divide depth);
    # memory ~ depth/remat_group + remat_group block carries for one more forward pass. None = off.
    c.remat_group = config_dict.placeholder(int)
    return c


def family(name: str) -> str:
    return "rn" if name in RESNETS else "mlp" if name == "mlp" else "t"


def _choice(field: str, value, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"model.{field}={value!r} is not supported; choose one of: {', '.join(map(str, allowed))}")


def _positive(field: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"model.{field}={value!r} must be a positive integer")


def validate(c: ml_collections.ConfigDict) -> None:
    """Raise ConfigError (a ValueError) with a one-line fix for the first bad value in ``c``."""
    _choice("name", c.name, NAMES)
    fam = family(c.name)
    for field in ("depth", "width", "num_classes", "unroll"):
        _positive(field, c[field])
    if not isinstance(c.head_depth, int) or c.head_depth < 0:
        raise ConfigError(f"model.head_depth={c.head_depth!r} must be an integer >= 0")
    _choice("activation", c.activation, sorted(ACTIVATIONS))
    if NORMS[fam]:
        _choice("norm", c.norm, NORMS[fam])
    _choice("input", c.input, INPUTS[fam])
    _choice("dtype", c.dtype, DTYPES)
    _choice("precision", c.precision, tuple(PRECISIONS))
    if not (isinstance(c.init_scale, (int, float)) and math.isfinite(c.init_scale) and c.init_scale > 0):
        raise ConfigError(f"model.init_scale={c.init_scale!r} must be a finite number > 0")
    if c.mlp_dim is not None:
        _positive("mlp_dim", c.mlp_dim)
    if c.remat_policy is not None:
        _choice("remat_policy", c.remat_policy, REMAT_POLICIES)
    if c.remat_group is not None:
        _positive("remat_group", c.remat_group)
        if c.depth % c.remat_group or not c.scan or c.remat_policy is None:
            raise ConfigError(f"model.remat_group={c.remat_group} needs scan=True, a remat_policy and a depth "
                             f"divisible by it (depth={c.depth}, scan={c.scan}, remat_policy={c.remat_policy!r})")
    if fam == "t":
        _positive("num_heads", c.num_heads)
        if c.width % c.num_heads:
            raise ConfigError(f"model.width={c.width} is not divisible by model.num_heads={c.num_heads}; "
                             "change one so that width % num_heads == 0")
        _choice("pooling", c.pooling, POOLINGS)
        if c.input == "image":
            _positive("patch_size", c.patch_size)
        else:
            _positive("vocab_size", c.vocab_size)
            _positive("max_len", c.max_len)
