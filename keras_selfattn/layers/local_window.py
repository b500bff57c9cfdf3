"""Sliding-window multi-head self-attention, computed blockwise."""

import math

import keras

from keras_selfattn import kernels
from keras_selfattn.layers.base_attention import SequenceSelfAttention
from keras_selfattn.layers.base_attention import check_grouped_heads
from keras_selfattn.layers.base_attention import check_int, check_positive_int
from keras_selfattn.layers.base_attention import check_query_rows


@keras.saving.register_keras_serializable(package="keras_selfattn")
class LocalWindow(SequenceSelfAttention):
    """Multi-head self-attention restricted to a sliding window.

    The local attention of "Longformer" (Beltagy et al., 2020): query `i` sees
    keys `j` with `abs(i - j) < window_size`, or `i - window_size < j <= i`
    with `use_causal_mask`, the band of Keras's `sliding_window`. It is
    computed a block of `window_size` queries at a time against their own
    and neighbouring key blocks, so memory grows with `T * window_size`,
    never with `T * T`. Its weights have the shapes and order of
    `MultiHead`'s (and of `keras.layers.MultiHeadAttention`'s), and given
    the same weights it equals `MultiHead(sliding_window=window_size)`.

    Args:
        num_heads: number of query heads.
        key_dim: width of each query/key head.
        window_size: the band's half-width, a positive int.
        global_tokens: how many leading positions attend to every position
            and are attended by every position (Longformer's global
            attention, as it gives `[CLS]`); 0 for none. Computed as the
            band plus `(T, g)` columns and `(g, T)` rows, never `T x T`.
        value_dim: width of each value head; defaults to `key_dim`.
        num_key_value_heads: number of key/value heads (grouped-query
            attention); must divide `num_heads`. Defaults to `num_heads`.
        dropout, use_bias, kernel_initializer, bias_initializer,
        kernel_regularizer, bias_regularizer, activity_regularizer,
        kernel_constraint, bias_constraint, seed: as in `MultiHead`.

    Call arguments:
        inputs: `(B, T, dim)` float tensor.
        mask: `(B, T)` boolean padding mask (default: the input's Keras mask).
        attention_mask: boolean, broadcastable to `(B, heads, T, T)`; only
            its band is read.
        use_causal_mask: whether query `i` may only see keys `j <= i`.
        return_attention_scores: whether to also return the weights, as a
            dense `(B, heads, T, T)` tensor (this one costs `T * T`).
        training: whether dropout is active.

    Returns:
        `(B, T, dim)`, and the weights `(B, heads, T, T)` when
        `return_attention_scores=True`.

    Example:

    >>> x = keras.random.normal((1, 1000, 32))
    >>> tuple(LocalWindow(num_heads=4, key_dim=8, window_size=64)(x).shape)
    (1, 1000, 32)
    """

    def __init__(self, num_heads, key_dim, window_size, value_dim=None,
                 num_key_value_heads=None, global_tokens=0, **kwargs):
        check_grouped_heads(num_heads, num_key_value_heads)
        check_positive_int("key_dim", key_dim)
        check_positive_int("window_size", window_size)
        check_int("global_tokens", global_tokens, minimum=0)
        check_positive_int("value_dim", value_dim, allow_none=True)
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.window_size = window_size
        self.value_dim = value_dim
        self.num_key_value_heads = num_key_value_heads
        self.global_tokens = global_tokens

    def build(self, input_shape):
        input_shape = self.check_input_shape(input_shape)
        self.input_width = input_shape[-1]
        self.build_head_projections(
            input_shape, input_shape, input_shape, self.num_heads,
            self.num_key_value_heads or self.num_heads, self.key_dim,
            self.value_dim or self.key_dim, (input_shape[-1],),
        )

    def compute_attention(self, inputs, padding_mask, attention_mask,
                          use_causal_mask, training, return_attention_scores):
        query = self.query_dense(inputs)
        key = self.key_dense(inputs)
        value = self.value_dense(inputs)
        scale = 1.0 / math.sqrt(self.key_dim)
        dropout = self.apply_dropout(training)
        length = kernels.static_or_dynamic_shape(inputs)[1]
        blocks_span = (2 if use_causal_mask else 3) * self.window_size
        if isinstance(length, int) and 2 * length <= 3 * blocks_span:
            # Each block would see most of the sequence anyway: the dense
            # band costs little more memory, and its 6 matmuls beat the
            # blocked kernel's 9 up to about 1.5 block spans (measured at
            # T = 4 windows: 89 ms dense, 114 ms blocked).
            return self._dense(query, key, value, length, scale, dropout,
                               padding_mask, attention_mask, use_causal_mask)
        if not self.needs_dense_weights(training, return_attention_scores):
            # One block at a time, weights recomputed in the backward pass:
            # training never holds every block's weights at once.
            output = kernels.blocked_attention(
                query, key, value, scale=scale, query_mask=padding_mask,
                key_mask=padding_mask, attention_mask=attention_mask,
                causal=use_causal_mask, window_size=self.window_size,
                band=True, return_log_sum=bool(self.global_tokens),
            )
            if self.global_tokens:
                output = kernels.merge_global_tokens(
                    query, key, value, *output, self.global_tokens,
                    self.window_size, scale, padding_mask, padding_mask,
                    attention_mask, use_causal_mask,
                )
            return self.output_dense(output), None
        if self.global_tokens:
            # The weights themselves (returned, or dropped out) with global
            # rows and columns: the dense kernel, `T x T`.
            return self._dense(query, key, value, length, scale, dropout,
                               padding_mask, attention_mask, use_causal_mask)
        output, band_weights = kernels.banded_attention(
            query, key, value, self.window_size,
            causal=use_causal_mask,
            query_mask=padding_mask,
            key_mask=padding_mask,
            attention_mask=attention_mask,
            scale=scale,
            dropout=dropout,
        )
        scores = None
        if return_attention_scores:
            scores = kernels.band_to_dense(band_weights, length)
        return self.output_dense(output), scores

    def _dense(self, query, key, value, length, scale, dropout, padding_mask,
               attention_mask, use_causal_mask):
        mask = self._dense_mask(length, 0, length, padding_mask,
                                attention_mask, use_causal_mask)
        output, scores = kernels.dot_product_attention(
            query, key, value, mask=mask, scale=scale, dropout=dropout
        )
        return self.output_dense(output), scores

    def _dense_mask(self, length, start, stop, padding_mask, attention_mask,
                    use_causal_mask):
        """The band (with global rows and columns) of queries `start:stop`."""
        return kernels.dense_attention_mask(
            stop - start, length,
            None if padding_mask is None else padding_mask[:, start:stop],
            padding_mask, kernels.attention_mask_rows(attention_mask, start, stop),
            causal=use_causal_mask, window_size=self.window_size,
            query_offset=start, global_tokens=self.global_tokens,
        )

    def attention_rows(self, inputs, start, stop, mask=None,
                       attention_mask=None, use_causal_mask=False):
        """Rows `start:stop` of the weights, in `(stop - start) x T`: see
        `SequenceSelfAttention.attention_rows`."""
        batch, length = kernels.static_or_dynamic_shape(inputs)[:2]
        check_query_rows(start, stop, length)
        attention_mask = kernels.normalize_attention_mask(
            attention_mask, length, length,
            batch if isinstance(batch, int) else None, self.num_heads,
        )
        mask = self._dense_mask(length, start, stop, mask, attention_mask,
                                use_causal_mask)
        return kernels.attention_weights(
            self.query_dense(inputs[:, start:stop]), self.key_dense(inputs),
            mask, 1.0 / math.sqrt(self.key_dim),
        )

    def output_width_for(self, input_shape):
        return input_shape[-1]

    def num_heads_for(self, input_shape):
        return self.num_heads

    def get_config(self):
        return {
            **super().get_config(),
            "num_heads": self.num_heads,
            "key_dim": self.key_dim,
            "window_size": self.window_size,
            "value_dim": self.value_dim,
            "num_key_value_heads": self.num_key_value_heads,
            "global_tokens": self.global_tokens,
        }
