"""A synthetic text task for machines without IMDB: the label is decided by the whole context.

Each sequence holds random filler tokens and a few copies of K cue tokens; its
label is the cue that occurs most often. No single position decides it, so a
model must aggregate over the sequence (attention, or pooling of token
embeddings), as sentiment classification of reviews must.
"""

from __future__ import annotations

import numpy as np

from ncjax.data.dataset import DataError, Dataset


def make_synthetic_sequences(
    num_classes: int,
    vocab_size: int,
    length: int,
    n_per_class_train: int,
    n_per_class_test: int,
    seed: int,
) -> Dataset:
    """Token ids: 0 unused (padding), 1..K the cues, K+1..vocab_size-1 filler.

    Every cue appears between 0 and ``length // (4K)`` times at random positions,
    and the labelled class one time more than any other, so the argmax is unique.
    """
    max_copies = length // (4 * num_classes)
    if num_classes < 2 or vocab_size < num_classes + 2 or max_copies < 1 or n_per_class_train < 1:
        raise DataError(
            "synthetic_sequences needs num_classes >= 2, vocab_size >= num_classes + 2, "
            f"length >= 4 * num_classes and n_per_class_train >= 1; got num_classes={num_classes}, "
            f"vocab_size={vocab_size}, length={length}, n_per_class_train={n_per_class_train}"
        )

    def sample(n_per_class: int, stream: int):
        rng = np.random.default_rng([seed, stream])
        y = np.repeat(np.arange(num_classes, dtype=np.int32), n_per_class)
        x = rng.integers(num_classes + 1, vocab_size, size=(len(y), length)).astype(np.int32)
        copies = rng.integers(0, max_copies, size=(len(y), num_classes))
        copies[np.arange(len(y)), y] = copies.max(1) + 1
        for i in range(len(y)):  # data generation, once: a loop over samples is fine here
            cues = np.repeat(np.arange(1, num_classes + 1), copies[i])
            x[i, rng.choice(length, size=cues.size, replace=False)] = cues
        return x, y

    train_x, train_y = sample(n_per_class_train, 1)
    test_x, test_y = sample(n_per_class_test, 2) if n_per_class_test else (None, None)
    return Dataset(train_x, train_y, test_x, test_y, num_classes, "tokens",
                   f"synthetic_sequences(K={num_classes},T={length})", vocab_size=vocab_size)
