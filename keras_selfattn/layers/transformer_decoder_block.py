"""Transformer decoder block with a key/value cache."""

import keras
from keras import ops

from keras_selfattn.layers.base_attention import check_feature_shape
from keras_selfattn.layers.multi_head import MultiHead
from keras_selfattn.layers.transformer_common import ResidualBlock


@keras.saving.register_keras_serializable(package="keras_selfattn")
class TransformerDecoderBlock(ResidualBlock):
    """Causal self-attention, cross-attention and a feed-forward network.

    The decoder layer of "Attention Is All You Need". For generation it keeps
    a key/value cache: decoding step `t` projects only the new token and
    attends over the `t` cached positions, so a step costs `O(t)`, and
    cached decoding equals running the whole prefix.

    Args:
        num_heads, intermediate_dim, key_dim, dropout, attention_dropout,
        activation, normalize_first, layer_norm_epsilon, kernel_initializer,
        bias_initializer, attention_impl: as in `TransformerEncoderBlock`.

    Call arguments:
        decoder_sequence: `(B, T, dim)`.
        encoder_sequence: `(B, S, dim)` or `None` (decoder-only).
        decoder_padding_mask: `(B, T)`; defaults to the Keras mask.
        encoder_padding_mask: `(B, S)`; defaults to the Keras mask.
        self_attention_cache: `(B, 2, T_max, heads, key_dim)` or `None`.
        self_attention_cache_update_index: position of
            `decoder_sequence[:, 0]` in the cache.
        cross_attention_cache: `(B, 2, S, heads, key_dim)` from
            `cross_attention_cache_for`, or `None`.
        use_causal_mask: causal self-attention (default `True`).
        training: whether dropout is active.

    Returns:
        `(B, T, dim)`; with caches, `(output, self_attention_cache,
        cross_attention_cache)`.

    Example:

    >>> block = TransformerDecoderBlock(num_heads=2, intermediate_dim=32)
    >>> tuple(block(keras.random.normal((2, 5, 16)),
    ...             keras.random.normal((2, 7, 16))).shape)
    (2, 5, 16)
    """

    def build(self, decoder_sequence_shape, encoder_sequence_shape=None):
        shape = check_feature_shape(
            "decoder_sequence", decoder_sequence_shape, 3, 3
        )
        width = self.head_width(shape[-1])
        self.self_attention = MultiHead(
            self.num_heads, width, dropout=self.attention_dropout,
            dtype=self.dtype_policy, name="self_attention",
            attention_impl=self.attention_impl,
            **self.initializers(),
        )
        self.self_attention.build(shape)
        self.self_attention_norm, self.self_attention_dropout = (
            self.build_residual("self_attention", shape)
        )
        self.cross_attention = None
        if encoder_sequence_shape is not None:
            source = check_feature_shape(
                "encoder_sequence", encoder_sequence_shape, 3, 3
            )
            self.cross_attention = MultiHead(
                self.num_heads, width, dropout=self.attention_dropout,
                dtype=self.dtype_policy, name="cross_attention",
                attention_impl=self.attention_impl,
                **self.initializers(),
            )
            self.cross_attention.build(shape, source)
            self.cross_attention_norm, self.cross_attention_dropout = (
                self.build_residual("cross_attention", shape)
            )
        self.build_feed_forward(shape)

    def call(self, decoder_sequence, encoder_sequence=None,
             decoder_padding_mask=None, encoder_padding_mask=None,
             self_attention_cache=None, self_attention_cache_update_index=None,
             cross_attention_cache=None, use_causal_mask=True, training=None,
             decoder_sequence_mask=None, encoder_sequence_mask=None):
        if decoder_padding_mask is None:
            decoder_padding_mask = decoder_sequence_mask
        if encoder_padding_mask is None:
            encoder_padding_mask = encoder_sequence_mask
        use_cache = self_attention_cache is not None
        if (encoder_sequence is not None or cross_attention_cache is not None) \
                and self.cross_attention is None:
            raise ValueError(
                "This block was built without an encoder sequence, so it has "
                "no cross-attention. Received: an encoder_sequence or "
                "cross_attention_cache"
            )

        x = self._self_attention_sublayer(
            decoder_sequence, decoder_padding_mask, use_causal_mask, training,
            self_attention_cache, self_attention_cache_update_index,
        )
        if use_cache:
            x, self_attention_cache = x

        if self.cross_attention is not None and (
            encoder_sequence is not None or cross_attention_cache is not None
        ):
            def cross_attend(y):
                if cross_attention_cache is not None:
                    return self.cross_attention(
                        y, query_mask=decoder_padding_mask,
                        value_mask=encoder_padding_mask,
                        cache=cross_attention_cache, training=training,
                    )[0]
                return self.cross_attention(
                    y, encoder_sequence, query_mask=decoder_padding_mask,
                    value_mask=encoder_padding_mask, training=training,
                )

            x = self.residual(
                x, cross_attend, self.cross_attention_norm,
                self.cross_attention_dropout, training,
            )
        x = self.feed_forward(x, training)
        if use_cache:
            return x, self_attention_cache, cross_attention_cache
        return x

    def _self_attention_sublayer(self, decoder_sequence, padding_mask, use_causal_mask,
                                 training, cache=None, cache_update_index=None):
        """The residual self-attention sublayer; with a cache, `(output, cache)`."""
        def self_attend(x):
            if cache is not None:
                return self.self_attention(
                    x, query_mask=padding_mask, cache=cache,
                    cache_update_index=cache_update_index, training=training,
                )
            return self.self_attention(
                x, query_mask=padding_mask, value_mask=padding_mask,
                use_causal_mask=use_causal_mask, training=training,
            )

        return self.residual(
            decoder_sequence, self_attend, self.self_attention_norm,
            self.self_attention_dropout, training,
        )

    def cross_attention_scores(self, decoder_sequence, encoder_sequence,
                               decoder_padding_mask=None, encoder_padding_mask=None,
                               use_causal_mask=True):
        """The block's cross-attention weights `(B, heads, T, S)`: how much
        each decoder position attends to each encoder position."""
        if self.cross_attention is None:
            raise ValueError(
                "This block was built without an encoder sequence, so it has "
                "no cross-attention weights."
            )
        x = self._self_attention_sublayer(
            decoder_sequence, decoder_padding_mask, use_causal_mask, training=False
        )
        query = self.cross_attention_norm(x) if self.normalize_first else x
        _, scores = self.cross_attention(
            query, encoder_sequence, query_mask=decoder_padding_mask,
            value_mask=encoder_padding_mask, return_attention_scores=True,
        )
        return scores

    def cross_attention_cache_for(self, encoder_sequence):
        """Projects the encoder output once: `(B, 2, S, heads, key_dim)`."""
        return ops.stack(
            (self.cross_attention.key_dense(encoder_sequence),
             self.cross_attention.value_dense(encoder_sequence)),
            axis=1,
        )

    @staticmethod
    def cross_attention_caches(blocks, encoder_sequence):
        """`cross_attention_cache_for` of every block of a decoder stack
        reading one encoder output, from one matmul over their stacked key
        and value projections (what decoding does once per sentence).

        Falls back to one block at a time when a projection is LoRA-adapted
        or quantized, whose kernels are not plain matrices.
        """
        projections = [
            dense for block in blocks
            for dense in (block.cross_attention.key_dense,
                          block.cross_attention.value_dense)
        ]
        plain = all(
            not getattr(dense, "lora_enabled", False)
            and getattr(dense, "quantization_mode", None) is None
            for dense in projections
        )
        if len(blocks) < 2 or not plain:
            return [block.cross_attention_cache_for(encoder_sequence)
                    for block in blocks]
        dtype = blocks[0].compute_dtype
        # (dim, 2 * blocks, heads, key_dim), key and value of each block.
        kernel = ops.stack(
            [ops.cast(dense.kernel, dtype) for dense in projections], axis=1)
        projected = ops.einsum("bsd,dnhk->bnshk",
                               ops.cast(encoder_sequence, dtype), kernel)
        if blocks[0].cross_attention.use_bias:
            bias = ops.stack(
                [ops.cast(dense.bias, dtype) for dense in projections])
            projected = projected + bias[None, :, None]
        return ops.split(projected, len(blocks), axis=1)

    def empty_self_attention_cache(self, batch_size, max_length):
        """A zero cache `(B, 2, max_length, heads, key_dim)` to decode into."""
        return ops.zeros(
            (batch_size, 2, max_length, self.num_heads,
             self.self_attention.key_dim),
            dtype=self.compute_dtype,
        )
