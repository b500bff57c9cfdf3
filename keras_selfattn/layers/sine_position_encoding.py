"""Fixed sinusoidal position encoding."""

import math

import keras
from keras import ops

from keras_selfattn import kernels
from keras_selfattn.layers.base_attention import check_feature_shape


@keras.saving.register_keras_serializable(package="keras_selfattn")
class SinePositionEncoding(keras.layers.Layer):
    """Sinusoidal position encoding of "Attention Is All You Need".

    Feature `2i` of position `p` is `sin(p / max_wavelength^(2i / dim))`,
    feature `2i + 1` the matching cosine. No weights.

    Args:
        max_wavelength: the longest wavelength of the sinusoids.

    Call arguments:
        inputs: `(B, T, dim)`; only its shape is read.
        start_index: position of `inputs[:, 0]`.

    Returns:
        `(B, T, dim)` encodings, to be added to `inputs`.

    Example:

    >>> x = keras.random.normal((2, 5, 8))
    >>> tuple(SinePositionEncoding()(x).shape)
    (2, 5, 8)
    """

    def __init__(self, max_wavelength=10000, **kwargs):
        if not isinstance(max_wavelength, (int, float)) or max_wavelength <= 1:
            raise ValueError(
                "`max_wavelength` must be a number greater than 1. "
                f"Received: max_wavelength={max_wavelength!r}"
            )
        super().__init__(**kwargs)
        self.max_wavelength = max_wavelength
        self.supports_masking = True

    def build(self, input_shape):
        check_feature_shape("inputs", input_shape, 3, 3)

    def call(self, inputs, start_index=0):
        batch, length, width = kernels.static_or_dynamic_shape(inputs)
        positions = ops.cast(
            ops.arange(length) + start_index, "float32"
        )[:, None]
        feature = ops.arange(width)
        pair_index = ops.cast(feature // 2 * 2, "float32")
        frequency = ops.exp(
            -math.log(self.max_wavelength) * pair_index / float(width)
        )
        angles = positions * frequency[None, :]
        encoding = ops.where(
            ops.equal(feature % 2, 0)[None, :], ops.sin(angles), ops.cos(angles)
        )
        return ops.broadcast_to(
            ops.cast(encoding, self.compute_dtype)[None], (batch, length, width)
        )

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {**super().get_config(), "max_wavelength": self.max_wavelength}
