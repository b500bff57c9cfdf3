"""Bahdanau additive self-attention, computed in query chunks."""

import keras
from keras import ops

from keras_selfattn import kernels
from keras_selfattn.layers.base_attention import SequenceSelfAttention
from keras_selfattn.layers.base_attention import check_positive_int


@keras.saving.register_keras_serializable(package="keras_selfattn")
class Additive(SequenceSelfAttention):
    """Additive (Bahdanau) self-attention, one or more heads.

    Follows "Neural Machine Translation by Jointly Learning to Align and
    Translate" (Bahdanau et al., 2015): the logit of query `i` for key `j` in
    head `h` is `v_h . tanh(W_q x_i + W_k x_j + b)_h`. The logits are
    computed a chunk of queries at a time, forward and backward, so no
    `(B, T, T, units)` tensor is ever held.

    Args:
        units: total width of the score features and of the values (split
            evenly over the heads); also the output width. Defaults to the
            input width.
        num_heads: number of heads; must divide `units`.
        window_size: if set, query `i` sees only keys with
            `abs(i - j) < window_size` (causal: `i - window_size < j <= i`).
        query_chunk_size: queries per chunk; by default chosen so a chunk
            holds about four million score features.
        dropout, use_bias, kernel_initializer, bias_initializer,
        kernel_regularizer, bias_regularizer, activity_regularizer,
        kernel_constraint, bias_constraint, seed: as in `MultiHead`.

    Call arguments:
        inputs: `(B, T, dim)` float tensor.
        mask: `(B, T)` boolean padding mask (default: the input's Keras mask).
        attention_mask: boolean, broadcastable to `(B, heads, T, T)`.
        use_causal_mask: whether query `i` may only see keys `j <= i`.
        return_attention_scores: whether to also return the weights.
        training: whether dropout is active.

    Returns:
        `(B, T, units)`, and the weights `(B, heads, T, T)` when
        `return_attention_scores=True`.

    Example:

    >>> x = keras.random.normal((2, 6, 8))
    >>> tuple(Additive(units=8, num_heads=2)(x).shape)
    (2, 6, 8)
    """

    def __init__(self, units=None, num_heads=1, window_size=None,
                 query_chunk_size=None, **kwargs):
        check_positive_int("units", units, allow_none=True)
        check_positive_int("num_heads", num_heads)
        check_positive_int("window_size", window_size, allow_none=True)
        check_positive_int("query_chunk_size", query_chunk_size, allow_none=True)
        if units is not None and units % num_heads:
            raise ValueError(
                "`units` must be divisible by `num_heads`. Received: "
                f"units={units}, num_heads={num_heads}"
            )
        super().__init__(**kwargs)
        self.units = units
        self.num_heads = num_heads
        self.window_size = window_size
        self.query_chunk_size = query_chunk_size

    def build(self, input_shape):
        input_shape = self.check_input_shape(input_shape)
        self.input_width = input_shape[-1]
        width = self.output_width_for(input_shape)
        if width % self.num_heads:
            raise ValueError(
                "The output width must be divisible by `num_heads`; with "
                f"units=None it is the input width. Received: width={width}, "
                f"num_heads={self.num_heads}"
            )
        head_shape = (self.num_heads, width // self.num_heads)
        self.query_dense = self.projection("query", input_shape, head_shape)
        self.key_dense = self.projection("key", input_shape, head_shape)
        self.value_dense = self.projection("value", input_shape, head_shape)
        self.score_vector = self.add_weight(
            name="score_vector",
            shape=head_shape,
            initializer=self.kernel_initializer.__class__.from_config(
                self.kernel_initializer.get_config()
            ),
            regularizer=self.kernel_regularizer,
            constraint=self.kernel_constraint,
        )

    def compute_attention(self, inputs, padding_mask, attention_mask,
                          use_causal_mask, training, return_attention_scores):
        length = kernels.static_or_dynamic_shape(inputs)[1]
        logits = kernels.additive_logits(
            self.query_dense(inputs),
            self.key_dense(inputs),
            ops.cast(self.score_vector, self.compute_dtype),
            chunk_size=self.query_chunk_size,
        )
        mask = kernels.dense_attention_mask(
            length, length, padding_mask, padding_mask, attention_mask,
            causal=use_causal_mask, window_size=self.window_size,
        )
        weights = kernels.masked_softmax(logits, mask, self.compute_dtype)
        dropout = self.apply_dropout(training)
        combined = dropout(weights) if dropout is not None else weights
        output = kernels.weighted_values(combined, self.value_dense(inputs))
        batch = kernels.static_or_dynamic_shape(inputs)[0]
        width = self.output_width_for(inputs.shape)
        return ops.reshape(output, (batch, length, width)), weights

    def output_width_for(self, input_shape):
        return self.units or input_shape[-1]

    def num_heads_for(self, input_shape):
        return self.num_heads

    def get_config(self):
        return {
            **super().get_config(),
            "units": self.units,
            "num_heads": self.num_heads,
            "window_size": self.window_size,
            "query_chunk_size": self.query_chunk_size,
        }
