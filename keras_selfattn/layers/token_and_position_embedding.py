"""Token embedding plus learned position embedding."""

import keras
from keras import ops

from keras_selfattn.layers.base_attention import check_positive_int
from keras_selfattn.layers.position_embedding import PositionEmbedding


@keras.saving.register_keras_serializable(package="keras_selfattn")
class TokenAndPositionEmbedding(keras.layers.Layer):
    """Sums a token embedding and a learned position embedding.

    Args:
        vocabulary_size: number of token ids.
        sequence_length: the largest number of positions.
        embedding_dim: width of the embeddings.
        mask_zero: whether id 0 is padding; the output then carries a Keras
            mask that the attention layers honour.
        embeddings_initializer: initializer of both tables.

    Call arguments:
        inputs: `(B, T)` integer token ids.
        start_index: position of `inputs[:, 0]`.

    Returns:
        `(B, T, embedding_dim)`.

    Example:

    >>> ids = keras.ops.array([[5, 3, 0, 0]])
    >>> tuple(TokenAndPositionEmbedding(10, 8, 4, mask_zero=True)(ids).shape)
    (1, 4, 4)
    """

    def __init__(self, vocabulary_size, sequence_length, embedding_dim,
                 mask_zero=False, embeddings_initializer="uniform", **kwargs):
        check_positive_int("vocabulary_size", vocabulary_size)
        check_positive_int("sequence_length", sequence_length)
        check_positive_int("embedding_dim", embedding_dim)
        super().__init__(**kwargs)
        self.vocabulary_size = vocabulary_size
        self.sequence_length = sequence_length
        self.embedding_dim = embedding_dim
        self.mask_zero = mask_zero
        self.embeddings_initializer = keras.initializers.get(
            embeddings_initializer
        )
        self.token_embedding = keras.layers.Embedding(
            vocabulary_size,
            embedding_dim,
            embeddings_initializer=self._initializer(),
            mask_zero=mask_zero,
            dtype=self.dtype_policy,
            name="token_embedding",
        )
        self.position_embedding = PositionEmbedding(
            sequence_length,
            initializer=self._initializer(),
            dtype=self.dtype_policy,
            name="position_embedding",
        )
        self.supports_masking = mask_zero

    def _initializer(self):
        return self.embeddings_initializer.__class__.from_config(
            self.embeddings_initializer.get_config()
        )

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        if len(input_shape) != 2:
            raise ValueError(
                "`inputs` must be token ids shaped (B, T). Received: "
                f"inputs.shape={input_shape}"
            )
        self.token_embedding.build(input_shape)
        self.position_embedding.build(input_shape + (self.embedding_dim,))

    def call(self, inputs, start_index=0):
        if "int" not in str(inputs.dtype):
            raise TypeError(
                "`inputs` must be integer token ids. Received: "
                f"inputs.dtype={inputs.dtype}"
            )
        embedded = self.token_embedding(inputs)
        return embedded + self.position_embedding(
            embedded, start_index=start_index
        )

    def compute_mask(self, inputs, mask=None):
        if not self.mask_zero:
            return None
        return ops.not_equal(inputs, 0)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape) + (self.embedding_dim,)

    def get_config(self):
        return {
            **super().get_config(),
            "vocabulary_size": self.vocabulary_size,
            "sequence_length": self.sequence_length,
            "embedding_dim": self.embedding_dim,
            "mask_zero": self.mask_zero,
            "embeddings_initializer": keras.initializers.serialize(
                self.embeddings_initializer
            ),
        }
