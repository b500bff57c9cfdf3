"""The text encoder's preprocessor: BERT's masking of packed sequences, in TensorFlow ops."""

import tensorflow as tf

from keras_selfattn.layers.base_attention import check_int

MASK_RATE = 0.15
MAX_PREDICTIONS = 20


class MaskedLanguageModelPreprocessor:
    """Masks token sequences for masked-language-model pretraining, as BERT.

    Of each sequence's tokens with id >= `first_word_id` (not padding or
    special tokens), `rate` (rounded half to even; at least one, at most
    `max_predictions`) are picked, none in a sequence without such tokens;
    80% of those become `mask_id`, 10% a random word token, 10% stay.

    TensorFlow ops with stateless random draws, so it runs inside `tf.data`
    (`dataset.map`) and a seed fixes its masks: the pretraining recipe seeds
    each batch by `(seed, epoch, batch)`, so a resumed epoch masks its
    remaining batches as the uninterrupted run did. (keras-hub's
    `MaskedLMMaskGenerator` draws from unseeded random ops, so a resumed
    run would mask differently.)

    Args:
        mask_id: the id of `[MASK]`.
        first_word_id: the first id that is a word piece (the reserved
            tokens come before it).
        vocabulary_size: random replacements are drawn from
            `[first_word_id, vocabulary_size)`.
        rate: the share of word tokens picked.
        max_predictions: the most picked per sequence: the width `P` of
            the outputs (the sequence length when that is shorter).

    Call arguments:
        sequences: `(B, T)` int32 token ids, 0 for padding.
        seed: a shape `[2]` integer tensor, for the stateless draws.

    Returns:
        `(inputs, labels, weights)`: `{"token_ids": (B, T) int32,
        "mask_positions": (B, P) int32}`, the original ids `(B, P)` int32 and
        float32 weights `(B, P)`, 1 for picked positions and 0 for the
        padding of the position list (whose position and label are 0).

    Example:

    >>> masker = MaskedLanguageModelPreprocessor(mask_id=4, first_word_id=5,
    ...                                          vocabulary_size=100)
    >>> inputs, labels, weights = masker(tf.constant([[2, 40, 41, 42, 3, 0]]), seed=[0, 1])
    >>> int(weights.numpy().sum())  # 15% of 3 word tokens, at least one
    1
    """

    def __init__(self, mask_id, first_word_id, vocabulary_size, rate=MASK_RATE,
                 max_predictions=MAX_PREDICTIONS):
        check_int("first_word_id", first_word_id)
        check_int("vocabulary_size", vocabulary_size, minimum=first_word_id + 1)
        check_int("max_predictions", max_predictions)
        if not 0.0 < rate <= 1.0:
            raise ValueError(f"`rate` must lie in (0, 1]. Received: rate={rate!r}")
        self.mask_id = mask_id
        self.first_word_id = first_word_id
        self.vocabulary_size = vocabulary_size
        self.rate = rate
        self.max_predictions = max_predictions

    def __call__(self, sequences, seed):
        sequences = tf.convert_to_tensor(sequences, tf.int32)
        if sequences.shape.rank != 2:
            raise ValueError(f"`sequences` must be (B, T) token ids. Received: shape "
                             f"{sequences.shape}")
        seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 4)
        shape = tf.shape(sequences)
        length = sequences.shape[1]
        width = min(self.max_predictions, length) if length is not None else \
            tf.minimum(self.max_predictions, shape[1])
        candidates = sequences >= self.first_word_id
        keys = tf.where(candidates, tf.random.stateless_uniform(shape, seeds[0]), 2.0)
        # The `width` smallest keys, smallest first: a word token's rank in
        # the draw; those ranked below the sequence's count are picked.
        _, ranked = tf.math.top_k(-keys, k=width)
        counts = tf.clip_by_value(
            tf.round(tf.reduce_sum(tf.cast(candidates, tf.float32), 1) * self.rate),
            1.0, float(self.max_predictions))
        picked = (tf.cast(tf.range(width)[None, :], tf.float32) < counts[:, None]) & \
            tf.gather(candidates, ranked, batch_dims=1)
        # Listed by position, as the sequence reads.
        by_position = tf.argsort(ranked, axis=1, stable=True)
        positions = tf.gather(ranked, by_position, batch_dims=1)
        picked = tf.gather(picked, by_position, batch_dims=1)
        labels = tf.gather(sequences, positions, batch_dims=1)

        draw = tf.random.stateless_uniform(tf.shape(positions), seeds[1])
        random_tokens = tf.random.stateless_uniform(
            tf.shape(positions), seeds[2], minval=self.first_word_id,
            maxval=self.vocabulary_size, dtype=tf.int32)
        replacement = tf.where(draw < 0.8, self.mask_id,
                               tf.where(draw < 0.9, random_tokens, labels))
        rows = tf.broadcast_to(tf.range(shape[0])[:, None], tf.shape(positions))
        where = tf.stack([tf.boolean_mask(rows, picked), tf.boolean_mask(positions, picked)], 1)
        corrupted = tf.tensor_scatter_nd_update(sequences, where,
                                                tf.boolean_mask(replacement, picked))
        zeros = tf.zeros_like(positions)
        inputs = {"token_ids": corrupted, "mask_positions": tf.where(picked, positions, zeros)}
        return inputs, tf.where(picked, labels, zeros), tf.cast(picked, tf.float32)

    def dataset(self, sequences, batch_size, seed):
        """A `tf.data.Dataset` of masked batches of `sequences` `(N, T)`, in
        order; batch `i` is masked with the seed `(seed[0], seed[1], i)`."""
        batches = tf.data.Dataset.from_tensor_slices(sequences).batch(batch_size)
        base = tf.constant(list(seed), tf.int64)

        def mask(index, batch):
            return self(batch, tf.random.experimental.stateless_fold_in(base, index))

        return batches.enumerate().map(mask, num_parallel_calls=tf.data.AUTOTUNE,
                                       deterministic=True)

    def get_config(self):
        return {"mask_id": self.mask_id, "first_word_id": self.first_word_id,
                "vocabulary_size": self.vocabulary_size, "rate": self.rate,
                "max_predictions": self.max_predictions}
