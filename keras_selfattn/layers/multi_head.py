"""Multi-head attention, a drop-in for `keras.layers.MultiHeadAttention`."""

import math

import keras
import numpy as np
from keras import ops

from keras_selfattn import kernels
from keras_selfattn.layers.base_attention import BaseAttention
from keras_selfattn.layers.base_attention import check_feature_shape
from keras_selfattn.layers.base_attention import check_float_tensor
from keras_selfattn.layers.base_attention import check_grouped_heads
from keras_selfattn.layers.base_attention import check_positive_int
from keras_selfattn.layers.base_attention import check_query_rows
from keras_selfattn.layers.base_attention import check_width


@keras.saving.register_keras_serializable(package="keras_selfattn")
class MultiHead(BaseAttention):
    """Multi-head attention, a drop-in for `keras.layers.MultiHeadAttention`.

    Follows "Attention Is All You Need" (Vaswani et al., 2017). Takes the
    constructor and call arguments of the pinned Keras layer, creates the same
    weights in the same order (so `set_weights(mha.get_weights())` moves a
    trained Keras layer over) and gives the same results, except where Keras
    is wrong:

    - an explicit `query_mask` is honoured, not overwritten by the query's
      Keras mask;
    - a query whose keys are all masked gets all-zero weights, not a uniform
      average over padding;
    - softmax runs in float32, so large logits under `mixed_float16` neither
      overflow nor lose the mask;
    - `compute_output_spec` gives `(B, H, T_q, T_k)` scores for
      cross-attention;
    - `flash_attention` is kept in the config.

    On top of Keras: calling the layer with `value` omitted (or `value is
    query`) is self-attention through one fused Q/K/V projection;
    `num_key_value_heads` gives grouped-query attention (Ainslie et al.,
    2023); `cache` and `cache_update_index` decode incrementally.

    Args:
        num_heads: number of query heads.
        key_dim: width of each query/key head.
        value_dim: width of each value head; defaults to `key_dim`.
        dropout: dropout rate on the attention weights.
        use_bias: whether the projections have biases.
        output_shape: shape of the output besides the batch and attention
            axes; defaults to the query's last dimension.
        attention_axes: axes attended over; default all but batch, heads and
            features.
        sliding_window: if set, query `i` sees only keys `abs(i - j) <
            sliding_window`.
        flash_attention: accepted for compatibility; the computation is the
            same either way. `True` rejects dropout and returned scores, as
            in Keras.
        kernel_initializer, bias_initializer, kernel_regularizer,
        bias_regularizer, activity_regularizer, kernel_constraint,
        bias_constraint: of the projections.
        use_gate: whether a sigmoid gate computed from the query multiplies
            the attention output before the output projection.
        seed: seed of the dropout.
        num_key_value_heads: number of key/value heads; must divide
            `num_heads`. Defaults to `num_heads`.
        attention_impl: `"dense"` computes the `(B, H, T, S)` weights at
            once; `"blocked"` computes attention a block of queries at a
            time and recomputes the weights in the backward pass, so no
            `(B, H, T, S)` tensor is ever held; `"auto"` (default) takes
            the blocked kernel when those weights would be large (see
            `kernels.uses_blocked_kernel`). Calls that return the scores or
            apply dropout always take the dense kernel.

    Call arguments:
        query: `(B, T, dim)` (or more attention axes).
        value: `(B, S, dim)`; omitted for self-attention.
        key: `(B, S, dim)`; defaults to `value`.
        query_mask, value_mask, key_mask: boolean padding masks `(B, T)` and
            `(B, S)`; default to the inputs' Keras masks.
        attention_mask: boolean, broadcastable to `(B, H, T, S)`.
        return_attention_scores: whether to also return the weights.
        training: whether dropout is active.
        use_causal_mask: whether query `i` may only see keys `j <= i`.
        cache: `(B, 2, S_max, G, key_dim)` keys and values. With
            `cache_update_index`, the new keys/values of `query` are written
            at that index and the query attends to the cache up to it
            (self-attention decoding); without, the cache is used as the
            projected key/value (cross-attention decoding).
        cache_update_index: int or scalar tensor, position of `query[:, 0]`.
        mask: the query's padding mask when `query` is the only tensor
            argument (filled by Keras from its Keras mask).

    Returns:
        The output `(B, T, *output_shape)`; then the weights
        `(B, H, T, S)` if `return_attention_scores`; then the updated cache
        if `cache` was given.

    Example:

    >>> x = keras.random.normal((2, 10, 16))
    >>> tuple(MultiHead(num_heads=4, key_dim=8)(x).shape)
    (2, 10, 16)
    """

    def __init__(
        self,
        num_heads,
        key_dim,
        value_dim=None,
        dropout=0.0,
        use_bias=True,
        output_shape=None,
        attention_axes=None,
        sliding_window=None,
        flash_attention=None,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        activity_regularizer=None,
        kernel_constraint=None,
        bias_constraint=None,
        use_gate=False,
        seed=None,
        num_key_value_heads=None,
        attention_impl="auto",
        **kwargs,
    ):
        kernels.check_attention_impl(attention_impl)
        check_grouped_heads(num_heads, num_key_value_heads)
        check_positive_int("key_dim", key_dim)
        check_positive_int("value_dim", value_dim, allow_none=True)
        check_positive_int("sliding_window", sliding_window, allow_none=True)
        if output_shape is not None:
            if isinstance(output_shape, int):
                output_shape = (output_shape,)
            if not isinstance(output_shape, (list, tuple)) or not all(
                isinstance(d, int) and d > 0 for d in output_shape
            ):
                raise ValueError(
                    "Invalid `output_shape`: it must be a positive int or a "
                    f"tuple of them. Received: output_shape={output_shape!r}"
                )
            output_shape = tuple(output_shape)
        if isinstance(attention_axes, int):
            attention_axes = (attention_axes,)
        elif attention_axes is not None:
            if not isinstance(attention_axes, (list, tuple)) or not all(
                isinstance(a, int) for a in attention_axes
            ):
                raise ValueError(
                    "`attention_axes` must be an int, list, or tuple of ints. "
                    f"Received: attention_axes={attention_axes!r}"
                )
            attention_axes = tuple(attention_axes)
        if flash_attention and dropout > 0.0:
            raise ValueError(
                "Dropout is not supported when flash attention is enabled. "
                f"Received: dropout={dropout}, flash_attention=True"
            )
        super().__init__(
            dropout=dropout,
            use_bias=use_bias,
            kernel_initializer=kernel_initializer,
            bias_initializer=bias_initializer,
            kernel_regularizer=kernel_regularizer,
            bias_regularizer=bias_regularizer,
            activity_regularizer=activity_regularizer,
            kernel_constraint=kernel_constraint,
            bias_constraint=bias_constraint,
            seed=seed,
            **kwargs,
        )
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.value_dim = value_dim or key_dim
        self.num_key_value_heads = num_key_value_heads or num_heads
        self.sliding_window = sliding_window
        self.flash_attention = flash_attention
        self.use_gate = use_gate
        self.attention_axes = attention_axes
        self._output_shape_arg = output_shape
        self._value_dim_arg = value_dim
        self._num_key_value_heads_arg = num_key_value_heads
        self.attention_impl = attention_impl

    def build(self, query_shape, value_shape=None, key_shape=None):
        query_shape = check_feature_shape("query", query_shape)
        value_shape = check_feature_shape(
            "value", query_shape if value_shape is None else value_shape
        )
        key_shape = value_shape if key_shape is None else tuple(key_shape)
        _check_key_matches_value(value_shape, key_shape)
        key_shape = check_feature_shape("key", key_shape)
        if len(query_shape) != len(value_shape):
            raise ValueError(
                "`query` and `value` must have the same rank. Received: "
                f"query_shape={query_shape}, value_shape={value_shape}"
            )
        self._widths = {
            "query": query_shape[-1],
            "value": value_shape[-1],
            "key": key_shape[-1],
        }
        self._attention_axes, self._batch_axes = self._axes_for_rank(
            len(query_shape)
        )

        self.build_head_projections(
            query_shape, key_shape, value_shape, self.num_heads,
            self.num_key_value_heads, self.key_dim, self.value_dim,
            self._output_shape_arg or (query_shape[-1],), self.use_gate,
        )

    # The private names Keras's layer uses for its sublayers and window.
    # Code written against `keras.layers.MultiHeadAttention` reads them
    # (weight surgery, LoRA, quantization checks), so they point at ours.
    @property
    def _flash_attention(self):
        # Keras's layer keeps the argument under this private name, which
        # code written for that layer reads (Keras's own test file included).
        return self.flash_attention

    @property
    def _query_dense(self):
        return self.query_dense

    @property
    def _key_dense(self):
        return self.key_dense

    @property
    def _value_dense(self):
        return self.value_dense

    @property
    def _output_dense(self):
        return self.output_dense

    @property
    def _gate_dense(self):
        return self.gate_dense

    @property
    def _sliding_window(self):
        return self.sliding_window

    def _axes_for_rank(self, rank):
        """`(attention axes, batch-like axes)` of `rank`-D inputs, validated."""
        inner_axes = tuple(range(1, rank - 1))
        axes = self.attention_axes or inner_axes
        axes = tuple(sorted(a if a >= 0 else rank + a for a in axes))
        if not axes or any(a not in inner_axes for a in axes):
            raise ValueError(
                "`attention_axes` must name axes between the batch and the "
                f"feature axis of the {rank}-D inputs, i.e. among "
                f"{inner_axes}. Received: attention_axes={self.attention_axes}"
            )
        return axes, tuple(a for a in inner_axes if a not in axes)

    def call(
        self,
        query,
        value=None,
        key=None,
        query_mask=None,
        value_mask=None,
        key_mask=None,
        attention_mask=None,
        return_attention_scores=False,
        training=None,
        use_causal_mask=False,
        cache=None,
        cache_update_index=None,
        mask=None,
    ):
        # Keras fills `mask` (not `query_mask`) when only `query` is a tensor.
        query_mask = mask if query_mask is None else query_mask
        if self.flash_attention and return_attention_scores:
            raise ValueError(
                "Returning attention scores is not supported when flash "
                "attention is enabled. Please disable flash attention to "
                "access attention scores. Received: return_attention_scores=True"
            )
        self_attention = (value is None or value is query) and (
            key is None or key is query
        )
        # A cross-attention cache stands in for `value`: only masks given
        # for it apply to it.
        cache_key_mask = kernels.combine_masks(value_mask, key_mask)
        if value is None:
            value = query
            value_mask = query_mask if value_mask is None else value_mask
        if key is None:
            key = value
        for name, tensor in (("query", query), ("value", value), ("key", key)):
            check_float_tensor(name, tensor)
            check_width(name, tensor, self._widths[name])

        if cache is not None:
            return self._call_with_cache(
                query, value, key, query_mask, cache_key_mask, cache,
                cache_update_index, attention_mask, use_causal_mask, training,
                return_attention_scores,
            )

        if self_attention and self._can_fuse():
            query_heads, key_heads, value_heads = self._fused_projection(query)
        else:
            query_heads = self.query_dense(query)
            key_heads = self.key_dense(key)
            value_heads = self.value_dense(value)

        output, scores = self._attend(
            query_heads, key_heads, value_heads, query_mask,
            kernels.combine_masks(value_mask, key_mask), attention_mask,
            use_causal_mask, training, return_attention_scores,
        )
        output = self._project_output(output, query)
        if return_attention_scores:
            return output, scores
        return output

    def compute_attention(self, query, key, value, mask, training):
        """The math: `(B, T, H, K)` inputs, dense mask -> `(output, weights)`.

        Override to change how projected heads attend; a layer whose class
        overrides it always calls it (the dense path), whatever
        `attention_impl` says.
        """
        return kernels.dot_product_attention(
            query, key, value, mask=mask,
            scale=1.0 / math.sqrt(self.key_dim),
            dropout=self.apply_dropout(training),
        )

    def attention_rows(self, inputs, start, stop, mask=None,
                       attention_mask=None, use_causal_mask=False):
        """Self-attention weights of queries `start:stop` on every key.

        Rows `start:stop` of what `self(inputs, return_attention_scores=True)`
        returns, computed in `(stop - start) x T`, never `T x T`, so that a
        long sequence's weights can be read a few rows at a time.

        Args:
            inputs: `(B, T, dim)` (one attention axis).
            start, stop: the query positions, `0 <= start < stop <= T`.
            mask: `(B, T)` padding mask of the queries and keys.
            attention_mask, use_causal_mask: as in `call`.

        Returns:
            `(B, heads, stop - start, T)`.
        """
        if len(inputs.shape) != 3 or not self._is_flat():
            raise ValueError(
                "`attention_rows` reads rank-3 self-attention (B, T, dim) "
                "over one attention axis. Received: inputs.shape="
                f"{tuple(inputs.shape)}, attention_axes={self._attention_axes}"
            )
        batch, length = kernels.static_or_dynamic_shape(inputs)[:2]
        check_query_rows(start, stop, length)
        attention_mask = kernels.attention_mask_rows(
            kernels.normalize_attention_mask(
                attention_mask, length, length,
                batch if isinstance(batch, int) else None, self.num_heads,
            ),
            start, stop,
        )
        _, scores = self._attend(
            self.query_dense(inputs[:, start:stop]), self.key_dense(inputs),
            self.value_dense(inputs),
            None if mask is None else mask[:, start:stop], mask,
            attention_mask, use_causal_mask, training=False,
            return_attention_scores=True, query_offset=start,
        )
        return scores

    def _attend(self, query, key, value, query_mask, key_mask,
                attention_mask, use_causal_mask, training,
                return_attention_scores, query_offset=0):
        """Flattens the attention axes, masks, attends and restores the axes.

        Returns `(output, weights)`; the weights are `None` on the blocked
        kernel, which only runs when they are not asked for.
        """
        flat_query, restore = self._flatten_axes(query)
        flat_key, _ = self._flatten_axes(key)
        flat_value, _ = self._flatten_axes(value)
        q_len = kernels.static_or_dynamic_shape(flat_query)[1]
        k_len = kernels.static_or_dynamic_shape(flat_key)[1]
        batch = kernels.static_or_dynamic_shape(flat_query)[0]
        attention_mask = self._flatten_attention_mask(
            attention_mask, query, key, q_len, k_len,
            batch if isinstance(batch, int) else None,
        )
        query_mask = self._flatten_mask(query_mask, query)
        key_mask = self._flatten_mask(key_mask, key)
        # A subclass that overrides `compute_attention` gets it called.
        overridden = type(self).compute_attention is not MultiHead.compute_attention
        if not overridden and self.uses_blocked_kernel(
                batch, q_len, k_len, training, return_attention_scores):
            output = kernels.blocked_attention(
                flat_query, flat_key, flat_value,
                scale=1.0 / math.sqrt(self.key_dim),
                query_mask=query_mask, key_mask=key_mask,
                attention_mask=attention_mask, causal=use_causal_mask,
                window_size=self.sliding_window, query_offset=query_offset,
                # Self-attention in a window: only the neighbour blocks.
                band=self.sliding_window is not None
                and isinstance(q_len, int) and q_len == k_len
                and isinstance(query_offset, int) and query_offset == 0,
            )
            return restore(output), None
        mask = kernels.dense_attention_mask(
            q_len, k_len, query_mask, key_mask, attention_mask,
            causal=use_causal_mask,
            window_size=self.sliding_window,
            query_offset=query_offset,
        )
        output, weights = self.compute_attention(
            flat_query, flat_key, flat_value, mask, training
        )
        return restore(output), self._restore_scores(weights, query, key)

    def _project_output(self, attended, query):
        if self.use_gate:
            attended = attended * self.gate_dense(query)
        return self.output_dense(attended)

    def _can_fuse(self):
        # Fusing reads the kernels directly, which holds for plain float
        # kernels; sublayer activity regularizers need the separate calls.
        return all(
            getattr(d, "quantization_mode", None) is None
            and not getattr(d, "lora_enabled", False)
            for d in (self.query_dense, self.key_dense, self.value_dense)
        ) and self.projection_activity_regularizer is None

    def _fused_projection(self, inputs):
        """Q, K and V of `inputs` through one matmul on concatenated kernels."""
        denses = (self.query_dense, self.key_dense, self.value_dense)
        head_shapes = [tuple(d.kernel.shape[1:]) for d in denses]
        sizes = [int(np.prod(s)) for s in head_shapes]
        width = inputs.shape[-1]
        kernel = ops.concatenate(
            [ops.reshape(ops.cast(d.kernel, self.compute_dtype), (width, -1))
             for d in denses],
            axis=-1,
        )
        lead = kernels.static_or_dynamic_shape(inputs)[:-1]
        projected = ops.matmul(ops.reshape(inputs, (-1, width)), kernel)
        if self.use_bias:
            projected = projected + ops.concatenate(
                [ops.reshape(ops.cast(d.bias, self.compute_dtype), (-1,))
                 for d in denses],
                axis=0,
            )
        parts = ops.split(projected, np.cumsum(sizes)[:-1].tolist(), axis=-1)
        return tuple(
            ops.reshape(part, lead + shape)
            for part, shape in zip(parts, head_shapes)
        )

    def _call_with_cache(self, query, value, key, query_mask, key_mask, cache,
                         cache_update_index, attention_mask, use_causal_mask,
                         training, return_attention_scores):
        if self.key_dim != self.value_dim:
            raise ValueError(
                "A key/value cache needs `value_dim == key_dim`. Received: "
                f"key_dim={self.key_dim}, value_dim={self.value_dim}"
            )
        if len(query.shape) != 3:
            raise ValueError(
                "A key/value cache needs rank-3 inputs (B, T, dim). "
                f"Received: query.shape={tuple(query.shape)}"
            )
        query_heads = self.query_dense(query)
        if cache_update_index is None:
            # Cross-attention: the cache holds the projected source, whose
            # padding `value_mask`/`key_mask` still hides.
            key_heads, value_heads = cache[:, 0], cache[:, 1]
            offset, causal = 0, use_causal_mask
        else:
            # Keys and values written together: one select over the cache.
            new = ops.stack((self.key_dense(key), self.value_dense(value)), axis=1)
            cache = _write_at(cache, new, cache_update_index)
            batch, _, _, heads, width = kernels.static_or_dynamic_shape(cache)
            steps = kernels.static_or_dynamic_shape(query)[1]
            offset, key_mask = cache_update_index, None
            if _static_shapes_only() and not isinstance(cache_update_index, int):
                # JAX compiles static shapes: a traced index cannot size a
                # slice, so the whole cache is read; the causal mask from
                # the queries' offset hides its unfilled end.
                key_heads, value_heads = cache[:, 0], cache[:, 1]
                causal = True
            else:
                # Attend only to the filled part, so step t costs O(t).
                filled = ops.slice(cache, (0, 0, 0, 0, 0),
                                   (batch, 2, cache_update_index + steps, heads, width))
                key_heads, value_heads = filled[:, 0], filled[:, 1]
                # One query at the newest position may see every filled key:
                # no causal mask to build at each decoding step.
                causal = not (isinstance(steps, int) and steps == 1)
        output, scores = self._attend(
            query_heads, key_heads, value_heads, query_mask, key_mask,
            attention_mask, causal, training, return_attention_scores,
            query_offset=offset,
        )
        output = self._project_output(output, query)
        if return_attention_scores:
            return output, scores, cache
        return output, cache

    # Reshaping between the attention axes and the flat (B', T, H, K) layout.

    def _is_flat(self):
        return self._batch_axes == () and len(self._attention_axes) == 1

    def _flatten_axes(self, heads):
        """`(B, *S, H, K)` -> `(B * batch axes, prod(attention axes), H, K)`."""
        if self._is_flat():
            return heads, lambda x: x
        rank = len(heads.shape)
        order = (0,) + self._batch_axes + self._attention_axes + (
            rank - 2, rank - 1
        )
        moved = ops.transpose(heads, order)
        shape = kernels.static_or_dynamic_shape(moved)
        nb = 1 + len(self._batch_axes)
        flat = ops.reshape(
            moved, (-1, _product(shape[nb:rank - 2])) + shape[rank - 2:]
        )
        inverse = tuple(int(i) for i in np.argsort(order))

        def restore(output):
            out_shape = shape[:rank - 2] + tuple(
                kernels.static_or_dynamic_shape(output)[2:]
            )
            return ops.transpose(ops.reshape(output, out_shape), inverse)

        return flat, restore

    def _flatten_mask(self, mask, heads):
        if mask is None or self._is_flat():
            return mask
        order = (0,) + self._batch_axes + self._attention_axes
        moved = ops.transpose(ops.cast(mask, "bool"), order)
        shape = kernels.static_or_dynamic_shape(moved)
        return ops.reshape(
            moved, (-1, _product(shape[1 + len(self._batch_axes):]))
        )

    def _flatten_attention_mask(self, attention_mask, query, key, q_len,
                                k_len, batch):
        if attention_mask is None:
            return None
        if self._is_flat():
            return kernels.normalize_attention_mask(
                attention_mask, q_len, k_len, batch, self.num_heads
            )
        # Keras's layout: (B, *batch axes, *query axes, *key axes), the head
        # axis omitted.
        q_shape = kernels.static_or_dynamic_shape(query)
        k_shape = kernels.static_or_dynamic_shape(key)
        target = (
            (q_shape[0],)
            + tuple(q_shape[a] for a in self._batch_axes)
            + tuple(q_shape[a] for a in self._attention_axes)
            + tuple(k_shape[a] for a in self._attention_axes)
        )
        if len(attention_mask.shape) > len(target):
            raise ValueError(
                f"`attention_mask` must have rank <= {len(target)} for these "
                f"attention axes. Received: attention_mask.shape="
                f"{tuple(attention_mask.shape)}"
            )
        mask = ops.cast(attention_mask, "bool")
        while len(mask.shape) < len(target):
            mask = ops.expand_dims(mask, 0)
        mask = ops.broadcast_to(mask, target)
        return ops.reshape(mask, (-1, 1, q_len, k_len))

    def _restore_scores(self, weights, query, key):
        """`(B', H, T, S)` -> Keras's `(B, *batch axes, H, *T axes, *S axes)`."""
        if self._is_flat():
            return weights
        q_shape = kernels.static_or_dynamic_shape(query)
        k_shape = kernels.static_or_dynamic_shape(key)
        return ops.reshape(weights, self._scores_shape(
            q_shape, k_shape, self._attention_axes, self._batch_axes
        ))

    def _scores_shape(self, query_shape, key_shape, attention_axes,
                      batch_axes):
        """Keras's `(B, *batch axes, H, *query axes, *key axes)`."""
        return (
            (query_shape[0],)
            + tuple(query_shape[a] for a in batch_axes)
            + (self.num_heads,)
            + tuple(query_shape[a] for a in attention_axes)
            + tuple(key_shape[a] for a in attention_axes)
        )

    def compute_output_shape(self, query_shape, value_shape=None,
                             key_shape=None):
        query_shape = tuple(query_shape)
        value_shape = query_shape if value_shape is None else tuple(value_shape)
        key_shape = value_shape if key_shape is None else tuple(key_shape)
        _check_key_matches_value(value_shape, key_shape)
        return query_shape[:-1] + (self._output_shape_arg or query_shape[-1:])

    def compute_output_spec(self, query, value=None, key=None,
                            query_mask=None, value_mask=None, key_mask=None,
                            attention_mask=None,
                            return_attention_scores=False, training=None,
                            use_causal_mask=False, cache=None,
                            cache_update_index=None, mask=None):
        value_shape = None if value is None else value.shape
        key_shape = None if key is None else key.shape
        output = keras.KerasTensor(
            self.compute_output_shape(query.shape, value_shape, key_shape),
            dtype=self.compute_dtype,
        )
        outputs = [output]
        if return_attention_scores:
            source = key_shape or value_shape or query.shape
            if cache is not None:
                source = (None,) * len(query.shape)
            scores_shape = self._scores_shape(
                query.shape, source, *self._axes_for_rank(len(query.shape))
            )
            outputs.append(
                keras.KerasTensor(scores_shape, dtype=self.compute_dtype)
            )
        if cache is not None:
            outputs.append(keras.KerasTensor(cache.shape, dtype=cache.dtype))
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    def get_config(self):
        return {
            **super().get_config(),
            "num_heads": self.num_heads,
            "key_dim": self.key_dim,
            "value_dim": self._value_dim_arg,
            "output_shape": self._output_shape_arg,
            "attention_axes": self.attention_axes,
            "sliding_window": self.sliding_window,
            "flash_attention": self.flash_attention,
            "use_gate": self.use_gate,
            "num_key_value_heads": self._num_key_value_heads_arg,
            "attention_impl": self.attention_impl,
        }


def _check_key_matches_value(value_shape, key_shape):
    if tuple(value_shape[1:-1]) != tuple(key_shape[1:-1]):
        raise ValueError(
            "All dimensions of `value` and `key`, except the last one, "
            f"must be equal. Received: value_shape={tuple(value_shape)} and "
            f"key_shape={tuple(key_shape)}"
        )


def _product(dims):
    result = 1
    for dim in dims:
        result = result * dim
    return result


def _static_shapes_only():
    """Whether the backend compiles only static shapes (JAX)."""
    return keras.backend.backend() == "jax"


def _write_at(cache, new, index):
    """`cache` `(B, 2, S_max, ...)` with `new` `(B, 2, T, ...)` written at
    positions `index .. index + T - 1`.

    A select over the cache rather than `ops.slice_update`, which the
    TensorFlow backend lowers to `XlaDynamicUpdateSlice`: an op that runs
    only through XLA's on-demand compiler, which a stock TF Serving binary
    may lack, so an exported decoder using it can fail to serve.
    """
    positions = ops.arange(ops.shape(cache)[2], dtype="int32")
    offsets = positions - ops.cast(index, "int32")
    if new.shape[2] == 1:
        # One decoding step: the new row broadcasts over the select.
        written = ops.reshape(ops.equal(offsets, 0),
                              (1, 1, -1) + (1,) * (len(cache.shape) - 3))
        return ops.where(written, ops.cast(new, cache.dtype), cache)
    steps = ops.shape(new)[2]
    written = ops.logical_and(offsets >= 0, offsets < steps)
    aligned = ops.take(new, ops.clip(offsets, 0, steps - 1), axis=2)
    written = ops.reshape(written, (1, 1, -1) + (1,) * (len(cache.shape) - 3))
    return ops.where(written, ops.cast(aligned, cache.dtype), cache)

