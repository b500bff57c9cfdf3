"""Single-head scaled dot-product self-attention."""

import math

import keras

from keras_selfattn import kernels
from keras_selfattn.layers.base_attention import SequenceSelfAttention
from keras_selfattn.layers.base_attention import check_positive_int


@keras.saving.register_keras_serializable(package="keras_selfattn")
class SelfAttention(SequenceSelfAttention):
    """Single-head scaled dot-product self-attention with Q/K/V projections.

    Follows "Attention Is All You Need" (Vaswani et al., 2017) with one head:
    `softmax(Q K^T / sqrt(units)) V`, where `Q`, `K` and `V` are learned
    projections of the input to `units` features. There is no output
    projection: the output has `units` features.

    Args:
        units: width of the projections and of the output. Defaults to the
            input width.
        use_scale: whether to divide the logits by `sqrt(units)`.
        attention_impl: `"auto"`, `"dense"` or `"blocked"`, as in
            `MultiHead`.
        dropout, use_bias, kernel_initializer, bias_initializer,
        kernel_regularizer, bias_regularizer, activity_regularizer,
        kernel_constraint, bias_constraint, seed: as in `MultiHead`.

    Call arguments:
        inputs: `(B, T, dim)` float tensor.
        mask: `(B, T)` boolean padding mask; taken from the input's Keras mask
            when not given, and passed on to the output.
        attention_mask: boolean, broadcastable to `(B, 1, T, T)`,
            `True` = may attend; combined with the other masks by AND.
        use_causal_mask: whether query `i` may only see keys `j <= i`.
        return_attention_scores: whether to also return the weights.
        training: whether dropout is active.

    Returns:
        `(B, T, units)`, and the weights `(B, 1, T, T)` when
        `return_attention_scores=True`.

    Example:

    >>> x = keras.random.normal((2, 5, 8))
    >>> tuple(SelfAttention(units=4)(x).shape)
    (2, 5, 4)
    """

    def __init__(self, units=None, use_scale=True, attention_impl="auto",
                 **kwargs):
        check_positive_int("units", units, allow_none=True)
        kernels.check_attention_impl(attention_impl)
        super().__init__(**kwargs)
        self.units = units
        self.use_scale = use_scale
        self.attention_impl = attention_impl
        self.num_heads = 1

    def build(self, input_shape):
        input_shape = self.check_input_shape(input_shape)
        self.input_width = input_shape[-1]
        width = self.output_width_for(input_shape)
        self.query_dense = self.projection("query", input_shape, (1, width))
        self.key_dense = self.projection("key", input_shape, (1, width))
        self.value_dense = self.projection("value", input_shape, (1, width))

    def compute_attention(self, inputs, padding_mask, attention_mask,
                          use_causal_mask, training, return_attention_scores):
        width = self.output_width_for(inputs.shape)
        batch, length = kernels.static_or_dynamic_shape(inputs)[:2]
        query = self.query_dense(inputs)
        key = self.key_dense(inputs)
        value = self.value_dense(inputs)
        scale = 1.0 / math.sqrt(width) if self.use_scale else 1.0
        if self.uses_blocked_kernel(batch, length, length, training,
                                    return_attention_scores):
            output = kernels.blocked_attention(
                query, key, value, scale=scale, query_mask=padding_mask,
                key_mask=padding_mask, attention_mask=attention_mask,
                causal=use_causal_mask,
            )
            return keras.ops.squeeze(output, axis=2), None
        mask = kernels.dense_attention_mask(
            length, length, padding_mask, padding_mask, attention_mask,
            causal=use_causal_mask,
        )
        output, weights = kernels.dot_product_attention(
            query, key, value, mask=mask, scale=scale,
            dropout=self.apply_dropout(training),
        )
        return keras.ops.squeeze(output, axis=2), weights

    def output_width_for(self, input_shape):
        return self.units or input_shape[-1]

    def num_heads_for(self, input_shape):
        return 1

    def get_config(self):
        return {
            **super().get_config(),
            "units": self.units,
            "use_scale": self.use_scale,
            "attention_impl": self.attention_impl,
        }
