"""Learned position embedding."""

import keras
from keras import ops

from keras_selfattn import kernels
from keras_selfattn.layers.base_attention import check_feature_shape
from keras_selfattn.layers.base_attention import check_positive_int


@keras.saving.register_keras_serializable(package="keras_selfattn")
class PositionEmbedding(keras.layers.Layer):
    """A learned embedding for each position, as in BERT (Devlin et al., 2019).

    Args:
        sequence_length: the largest number of positions.
        initializer: initializer of the embedding table.

    Call arguments:
        inputs: `(B, T, dim)`; only its shape is read.
        start_index: position of `inputs[:, 0]` (non-zero while decoding).

    Returns:
        `(B, T, dim)` position embeddings, to be added to `inputs`.

    Example:

    >>> x = keras.random.normal((2, 5, 8))
    >>> tuple((x + PositionEmbedding(sequence_length=16)(x)).shape)
    (2, 5, 8)
    """

    def __init__(self, sequence_length, initializer="glorot_uniform", **kwargs):
        check_positive_int("sequence_length", sequence_length)
        super().__init__(**kwargs)
        self.sequence_length = sequence_length
        self.initializer = keras.initializers.get(initializer)
        self.supports_masking = True

    def build(self, input_shape):
        input_shape = check_feature_shape("inputs", input_shape, 3, 3)
        if isinstance(input_shape[1], int) and input_shape[1] > self.sequence_length:
            raise ValueError(
                f"`inputs` has {input_shape[1]} positions, more than "
                f"sequence_length={self.sequence_length}. Received: "
                f"inputs.shape={input_shape}"
            )
        self.position_embeddings = self.add_weight(
            name="embeddings",
            shape=(self.sequence_length, input_shape[-1]),
            initializer=self.initializer,
        )

    def call(self, inputs, start_index=0):
        batch, length, width = kernels.static_or_dynamic_shape(inputs)
        table = ops.convert_to_tensor(self.position_embeddings)
        positions = ops.slice(table, (start_index, 0), (length, width))
        return ops.broadcast_to(
            ops.cast(positions, self.compute_dtype)[None], (batch, length, width)
        )

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {
            **super().get_config(),
            "sequence_length": self.sequence_length,
            "initializer": keras.initializers.serialize(self.initializer),
        }
