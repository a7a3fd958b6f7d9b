"""Pre-LN L-T11 on text: collapse against depth on IMDB reviews (bytes) or a synthetic task.

    python -m ncjax.main --config=configs/text_depth.py:synthetic          # no data needed
    python -m ncjax.main --config=configs/text_depth.py                    # tfds:imdb_reviews, bytes
    python -m ncjax.main --config=configs/text_depth.py:paper

Presets (comma-separated after ':'): a data set (``imdb``: TFDS ``imdb_reviews`` as
UTF-8 bytes truncated/padded to ``data.max_len``; ``synthetic``: sequences whose label
is the most frequent of K cue tokens, decided by the whole context) and a size
(``default``, ``quick``, ``paper`` = depths 2…34, 5 seeds, learning rate 0.001).
IMDB must be prepared first on a machine with network:
``tfds build imdb_reviews --data_dir=DIR --file_format=array_record``.
"""

from ncjax import experiment

PRESETS = {"data": ("imdb", "synthetic"), "size": ("default", "quick", "paper")}


def get_config(arg=None):
    p = experiment.parse_presets(arg, PRESETS)
    c = experiment.base_config()
    c.name = "text_depth_" + p["data"] + ("" if p["size"] == "default" else "_" + p["size"])
    c.model.name = "t11"
    c.model.norm = "pre"
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
    experiment.apply_size(c, p["size"])
    return c
