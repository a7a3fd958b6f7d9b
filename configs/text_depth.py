"""Pre-LN L-T11 on text: collapse against depth on IMDB reviews (bytes) or a synthetic task.

    python -m ncjax.main --config=configs/text_depth.py:synthetic          # no data needed
    python -m ncjax.main --config=configs/text_depth.py                    # tfds:imdb_reviews, bytes
    python -m ncjax.main --config=configs/text_depth.py:paper

Presets (comma-separated after ':'): a data set (``imdb``: TFDS ``imdb_reviews`` as
UTF-8 bytes truncated/padded to ``data.max_len``; ``synthetic``: sequences whose label
is the most frequent of K cue tokens, decided by the whole context), a size
(``default``, ``quick``, ``paper`` = depths 2…34, 5 seeds, 5,000 epochs, learning rate
0.001 as docs/paper.md#reported-settings reports; the optimiser, Adam, and the batch size, 128, are ncjax's
choices: the paper reports neither) and a LayerNorm (``free_ln``, the default: the theory's
parameter-free LayerNorm, features of radius √width; ``nonpaper_affine_ln``: a learnable,
L2-penalised scale and shift). The blocks are pre-LN, ``h ← h + Attn(LN(h)); h ← h + MLP(LN(h))``
with a final LayerNorm before the head: the paper's text models (docs/paper.md#architectures).
IMDB must be prepared first on a machine with network:
``tfds build imdb_reviews --data_dir=DIR --file_format=array_record``.
"""

from ncjax import config

PRESETS = {"data": ("imdb", "synthetic"), "size": ("default", "quick", "paper"),
           "ln": ("free_ln", "nonpaper_affine_ln")}


def get_config(arg=None):
    p = config.parse_presets(arg, PRESETS)
    c = config.base_config()
    c.name = "text_depth_" + p["data"] + "".join(f"_{p[g]}" for g in PRESETS if g != "data" and p[g] != PRESETS[g][0])
    c.model.name = "t11"
    c.model.norm = "pre"
    c.model.norm_affine = p["ln"] == "nonpaper_affine_ln"
    c.model.num_heads = 4
    c.model.pooling = "mean"
    c.train.learning_rate = 0.001
    if p["data"] == "imdb":
        c.data.source = "tfds:imdb_reviews"
        c.data.max_len = 256
    else:
        c.data.source = "synthetic_sequences"
    if p["size"] == "default":
        c.depths = (2, 3, 5, 8)
        c.seeds = (0, 1)
        c.data.n_per_class = 500
        c.train.batch_size = 128
        c.train.epochs = 40
        c.checkpoint.every_steps = 500
        # CPU-sized depths: unrolled blocks make the transformer step faster on a CPU
        # (benchmarks/cpu_transformer_step.py); compile time then grows with depth.
        c.model.scan = False
    config.apply_size(c, p["size"])
    if p["size"] == "quick":
        c.data.n_per_class = 100  # two classes: 200 sequences, as many as the other quick presets' images
        c.depths = (2, 3, 4)  # a one-block transformer does not fit them in 60 steps
    return c
