"""Attention computations shared by every layer, written with `keras.ops` only.

Tensors use the layout the projections produce:
query `(B, T_q, H, K)`, key `(B, T_k, G, K)`, value `(B, T_k, G, V)`, where `G`
divides `H` (grouped-query attention; `G == H` is ordinary multi-head).
Attention weights are `(B, H, T_q, T_k)`; a mask is boolean, `True` = may
attend, broadcastable to the weights.
"""

import math

from keras import ops

# Logits at masked positions. Applied after the cast to float32, so it cannot
# overflow the way `x - 65504` does in float16.
_MASKED_LOGIT = -1e9
# Elements of the per-chunk `(B, C, T_k, H, U)` tanh tensor in additive
# attention; bounds the chunk when the key length is known while tracing.
_ADDITIVE_CHUNK_ELEMENTS = 1 << 22
_ADDITIVE_DEFAULT_CHUNK = 32


def static_or_dynamic_shape(x):
    """The shape of `x`, with Python ints where known and tensors elsewhere."""
    dynamic = ops.shape(x)
    return tuple(
        static if static is not None else dynamic[i]
        for i, static in enumerate(x.shape)
    )


def combine_masks(*masks):
    """Logical AND of the boolean masks that are not `None` (or `None`)."""
    combined = None
    for mask in masks:
        if mask is None:
            continue
        mask = ops.cast(mask, "bool")
        combined = mask if combined is None else ops.logical_and(combined, mask)
    return combined


def position_mask(query_length, key_length, causal=False, window_size=None,
                  query_offset=0):
    """Boolean `(T_q, T_k)` mask for causal and sliding-window attention.

    Query `i` stands at absolute position `i + query_offset` (non-zero while
    decoding with a cache); key `j` at position `j`. Causal allows `j <= i`;
    a window of `w` allows `abs(i - j) < w`. Returns `None` when neither
    applies.
    """
    if not causal and window_size is None:
        return None
    query_positions = ops.expand_dims(
        ops.arange(query_length, dtype="int32") + query_offset, -1
    )
    key_positions = ops.expand_dims(ops.arange(key_length, dtype="int32"), 0)
    mask = None
    if causal:
        mask = combine_masks(
            mask, ops.greater_equal(query_positions, key_positions)
        )
    if window_size is not None:
        mask = combine_masks(
            mask,
            ops.less(ops.abs(query_positions - key_positions), window_size),
        )
    return mask


def normalize_attention_mask(attention_mask, query_length, key_length,
                             batch_size=None, num_heads=None):
    """Validates a user `attention_mask` and returns it as `(B|1, H|1, T_q, T_k)`.

    Accepts rank 2 `(T_q, T_k)`, rank 3 `(B, T_q, T_k)` or rank 4
    `(B, H, T_q, T_k)`; any dimension may be 1 to broadcast. Raises a
    `ValueError` naming the received and expected shapes when the known
    dimensions cannot broadcast.
    """
    if attention_mask is None:
        return None
    rank = len(attention_mask.shape)
    if rank not in (2, 3, 4):
        raise ValueError(
            "`attention_mask` must have rank 2 (T_q, T_k), 3 (B, T_q, T_k) or "
            "4 (B, heads, T_q, T_k). Received: attention_mask.shape="
            f"{tuple(attention_mask.shape)}"
        )
    expected = {
        2: (query_length, key_length),
        3: (batch_size, query_length, key_length),
        4: (batch_size, num_heads, query_length, key_length),
    }[rank]
    for got, want in zip(attention_mask.shape, expected):
        if (isinstance(got, int) and isinstance(want, int) and got != 1
                and got != want):
            raise ValueError(
                "`attention_mask` cannot broadcast to the attention weights. "
                f"Received: attention_mask.shape={tuple(attention_mask.shape)}; "
                "expected each dimension to be 1 or to match "
                f"(batch, heads, T_q, T_k)={(batch_size, num_heads, query_length, key_length)}"
            )
    attention_mask = ops.cast(attention_mask, "bool")
    if rank == 2:
        attention_mask = attention_mask[None]
    if rank <= 3:
        attention_mask = ops.expand_dims(attention_mask, 1)
    return attention_mask


def dense_attention_mask(query_length, key_length, query_mask=None,
                         key_mask=None, attention_mask=None, causal=False,
                         window_size=None, query_offset=0):
    """Merges padding, causal, window and explicit masks into one dense mask.

    Args:
        query_length, key_length: `T_q` and `T_k`.
        query_mask: `(B, T_q)` padding mask of the queries, or `None`.
        key_mask: `(B, T_k)` padding mask of the keys, or `None`.
        attention_mask: explicit mask, already normalized to 4 dimensions.
        causal, window_size, query_offset: see `position_mask`.

    Returns:
        A boolean tensor broadcastable to `(B, H, T_q, T_k)`, or `None`.
    """
    masks = [attention_mask]
    if query_mask is not None:
        masks.append(ops.cast(query_mask, "bool")[:, None, :, None])
    if key_mask is not None:
        masks.append(ops.cast(key_mask, "bool")[:, None, None, :])
    positions = position_mask(
        query_length, key_length, causal, window_size, query_offset
    )
    if positions is not None:
        masks.append(positions[None, None])
    return combine_masks(*masks)


def masked_softmax(logits, mask=None, dtype=None, rows_may_be_empty=True):
    """Softmax over the last axis in float32, with fully masked rows all zero.

    Args:
        logits: attention logits of any float dtype.
        mask: boolean, broadcastable to `logits`, `True` = may attend.
        dtype: dtype of the returned weights (default: that of `logits`).
        rows_may_be_empty: `False` when the caller knows every row allows a
            key (e.g. a band without padding), which saves a pass.

    Returns:
        Weights summing to 1 over the allowed keys of each row, and exactly 0
        over masked keys and over rows with no allowed key.
    """
    dtype = dtype or logits.dtype
    logits = ops.cast(logits, "float32")
    if logits.shape[-1] == 1:
        # A single key takes all the weight (Keras warns on a size-1
        # softmax); written so the gradient stays connected and zero.
        weights = ops.exp(logits - logits)
    elif mask is None:
        return ops.cast(ops.softmax(logits, axis=-1), dtype)
    else:
        weights = ops.softmax(ops.where(mask, logits, _MASKED_LOGIT), axis=-1)
    if mask is None or not rows_may_be_empty:
        return ops.cast(weights, dtype)
    # A row with no allowed key would otherwise spread uniformly over
    # padding; multiplying by "row has any key" zeroes it instead.
    row_has_key = ops.any(mask, axis=-1, keepdims=True)
    weights = weights * ops.cast(row_has_key, "float32")
    return ops.cast(weights, dtype)


def _group_queries(query, num_kv_heads):
    """Reshapes `(B, T, H, K)` to `(B, T, G, H // G, K)` for grouped keys."""
    batch, length, heads, width = static_or_dynamic_shape(query)
    return ops.reshape(
        query, (batch, length, num_kv_heads, heads // num_kv_heads, width)
    )


def dot_product_logits(query, key):
    """Logits `(B, H, T_q, T_k)` of already-scaled `query` against `key`."""
    num_heads, num_kv_heads = query.shape[2], key.shape[2]
    if num_heads == num_kv_heads:
        return ops.einsum("bqhk,bshk->bhqs", query, key)
    grouped = ops.einsum(
        "bqgrk,bsgk->bgrqs", _group_queries(query, num_kv_heads), key
    )
    batch, groups, ratio, q_len, k_len = static_or_dynamic_shape(grouped)
    return ops.reshape(grouped, (batch, groups * ratio, q_len, k_len))


def weighted_values(weights, value):
    """Combines `(B, H, T_q, T_k)` weights with `(B, T_k, G, V)` values.

    Returns `(B, T_q, H, V)`.
    """
    num_heads, num_kv_heads = weights.shape[1], value.shape[2]
    if num_heads == num_kv_heads:
        return ops.einsum("bhqs,bshv->bqhv", weights, value)
    batch, _, q_len, k_len = static_or_dynamic_shape(weights)
    grouped = ops.reshape(
        weights,
        (batch, num_kv_heads, num_heads // num_kv_heads, q_len, k_len),
    )
    output = ops.einsum("bgrqs,bsgv->bqgrv", grouped, value)
    batch, q_len, groups, ratio, width = static_or_dynamic_shape(output)
    return ops.reshape(output, (batch, q_len, groups * ratio, width))


def dot_product_attention(query, key, value, mask=None, scale=None,
                          dropout=None):
    """Scaled dot-product attention.

    Args:
        query: `(B, T_q, H, K)`.
        key: `(B, T_k, G, K)`, `G` dividing `H`.
        value: `(B, T_k, G, V)`.
        mask: boolean, broadcastable to `(B, H, T_q, T_k)`.
        scale: multiplies the logits; default `1 / sqrt(K)`.
        dropout: callable applied to the weights before they combine values.

    Returns:
        `(output, weights)`: `(B, T_q, H, V)` and `(B, H, T_q, T_k)`.
    """
    if scale is None:
        scale = 1.0 / math.sqrt(query.shape[-1])
    query = ops.multiply(query, ops.cast(scale, query.dtype))
    weights = masked_softmax(dot_product_logits(query, key), mask, query.dtype)
    combined = dropout(weights) if dropout is not None else weights
    return weighted_values(combined, value), weights


def _pad_axis(x, axis, before, after):
    pad = [[0, 0]] * len(x.shape)
    pad[axis] = [before, after]
    return ops.pad(x, pad)


def _neighbour_blocks(x, num_blocks, block, causal):
    """Gathers for each block of `block` keys the blocks a query block sees.

    `x` is `(B, T, ...)`. Returns `(B, num_blocks, n * block, ...)` holding
    blocks `b - 1, b` (causal) or `b - 1, b, b + 1`, with zero blocks outside
    the sequence.
    """
    shape = static_or_dynamic_shape(x)
    padded = _pad_axis(x, 1, block, (num_blocks + 1) * block - shape[1])
    blocks = ops.reshape(
        padded, (shape[0], num_blocks + 2, block) + tuple(shape[2:])
    )
    offsets = (0, 1) if causal else (0, 1, 2)
    return ops.concatenate(
        [blocks[:, offset:offset + num_blocks] for offset in offsets], axis=2
    )


def banded_positions(length, window_size, causal):
    """Positions of the blocked layout used by `banded_attention`.

    Returns `(num_blocks, query_positions, key_positions)`, the positions
    being int32 `(num_blocks, w, 1)` and `(num_blocks, 1, n * w)`, where keys
    outside `[0, T)` have positions out of that range.
    """
    block = window_size
    num_blocks = (length + block - 1) // block
    span = 2 if causal else 3
    block_starts = ops.arange(num_blocks, dtype="int32") * block
    query_positions = block_starts[:, None, None] + ops.arange(
        block, dtype="int32"
    )[None, :, None]
    key_positions = (block_starts - block)[:, None, None] + ops.arange(
        span * block, dtype="int32"
    )[None, None, :]
    return num_blocks, query_positions, key_positions


def banded_attention(query, key, value, window_size, causal=False,
                     query_mask=None, key_mask=None, attention_mask=None,
                     scale=None, dropout=None):
    """Sliding-window self-attention computed blockwise.

    Query `i` sees keys `j` with `abs(i - j) < window_size` (causal:
    `i - window_size < j <= i`). Queries are cut into blocks of
    `window_size`; each block attends to its own block and its neighbours
    only, so memory grows with `T * window_size`, never with `T * T`.

    Args:
        query, key, value: `(B, T, H, K)`, `(B, T, G, K)`, `(B, T, G, V)`.
        window_size: positive int.
        causal: whether to also apply the causal mask.
        query_mask, key_mask: `(B, T)` padding masks or `None`.
        attention_mask: explicit mask normalized to `(B|1, H|1, T, T)`; only
            its band is read.
        scale, dropout: as in `dot_product_attention`.

    Returns:
        `(output, band_weights)`: `(B, T, H, V)` and the weights in the
        blocked layout `(B, H, num_blocks, w, n * w)`; `band_to_dense`
        expands the latter to `(B, H, T, T)`.
    """
    block = window_size
    batch, length, num_heads, key_width = static_or_dynamic_shape(query)
    num_kv_heads = key.shape[2]
    if scale is None:
        scale = 1.0 / math.sqrt(query.shape[-1])
    num_blocks, query_positions, key_positions = banded_positions(
        length, window_size, causal
    )
    query = ops.multiply(query, ops.cast(scale, query.dtype))
    query_blocks = ops.reshape(
        _pad_axis(query, 1, 0, num_blocks * block - length),
        (batch, num_blocks, block, num_heads, key_width),
    )
    key_blocks = _neighbour_blocks(key, num_blocks, block, causal)
    value_blocks = _neighbour_blocks(value, num_blocks, block, causal)
    if num_heads == num_kv_heads:
        logits = ops.einsum("bnqhk,bnshk->bhnqs", query_blocks, key_blocks)
    else:
        ratio = num_heads // num_kv_heads
        grouped = ops.reshape(
            query_blocks,
            (batch, num_blocks, block, num_kv_heads, ratio, key_width),
        )
        logits = ops.einsum("bnqgrk,bnsgk->bgrnqs", grouped, key_blocks)
        logits = ops.reshape(
            logits, (batch, num_heads, num_blocks, block, -1)
        )

    offsets = query_positions - key_positions
    in_band = ops.logical_and(
        ops.less(ops.abs(offsets), window_size),
        ops.logical_and(
            ops.greater_equal(key_positions, 0),
            ops.less(key_positions, length),
        ),
    )
    if causal:
        in_band = ops.logical_and(in_band, ops.greater_equal(offsets, 0))
    masks = [in_band[None, None]]
    if key_mask is not None:
        key_mask_blocks = _neighbour_blocks(
            ops.cast(key_mask, "int32"), num_blocks, block, causal
        )
        masks.append(ops.cast(key_mask_blocks, "bool")[:, None, :, None, :])
    if query_mask is not None:
        query_mask_blocks = ops.reshape(
            _pad_axis(ops.cast(query_mask, "int32"), 1, 0,
                      num_blocks * block - length),
            (batch, num_blocks, block),
        )
        masks.append(ops.cast(query_mask_blocks, "bool")[:, None, :, :, None])
    if attention_mask is not None:
        masks.append(_band_of_dense_mask(
            attention_mask, length, query_positions, key_positions
        ))
    # Without padding or explicit masks every query sees at least itself.
    weights = masked_softmax(
        logits, combine_masks(*masks), query.dtype,
        rows_may_be_empty=len(masks) > 1,
    )
    combined = dropout(weights) if dropout is not None else weights

    if num_heads == num_kv_heads:
        output = ops.einsum("bhnqs,bnshv->bnqhv", combined, value_blocks)
    else:
        grouped = ops.reshape(
            combined,
            (batch, num_kv_heads, num_heads // num_kv_heads, num_blocks,
             block, -1),
        )
        output = ops.einsum("bgrnqs,bnsgv->bnqgrv", grouped, value_blocks)
    output = ops.reshape(
        output, (batch, num_blocks * block, num_heads, value.shape[-1])
    )
    return output[:, :length], weights


def _band_of_dense_mask(attention_mask, length, query_positions,
                        key_positions):
    """Reads the blocked band of a `(B|1, H|1, T, T)` mask without copying it."""
    lead = static_or_dynamic_shape(attention_mask)[:2]
    flat = ops.reshape(attention_mask, lead + (-1,))
    rows = ops.minimum(query_positions, length - 1)
    cols = ops.clip(key_positions, 0, length - 1)
    return ops.take(flat, rows * length + cols, axis=2)


def band_to_dense(band_weights, length, window_size, causal):
    """Expands blocked band weights `(B, H, nb, w, n*w)` to `(B, H, T, T)`.

    Only for `return_attention_scores`; the `T * T` result is what the caller
    asked for.
    """
    batch, heads, num_blocks, block, span = static_or_dynamic_shape(
        band_weights
    )
    rows = ops.reshape(band_weights, (batch, heads, num_blocks * block, span))
    rows = rows[:, :, :length]
    query_positions = ops.arange(length, dtype="int32")[:, None]
    key_positions = ops.arange(length, dtype="int32")[None, :]
    first_key = (query_positions // window_size - 1) * window_size
    column = key_positions - first_key
    inside = ops.logical_and(
        ops.greater_equal(column, 0), ops.less(column, span)
    )
    column = ops.clip(column, 0, span - 1)
    index = ops.broadcast_to(
        column[None, None], (batch, heads, length, length)
    )
    dense = ops.take_along_axis(rows, index, axis=-1)
    return ops.where(inside[None, None], dense, ops.zeros_like(dense))


def _additive_chunk_size(key_length, heads, units):
    if isinstance(key_length, int):
        return max(1, _ADDITIVE_CHUNK_ELEMENTS // max(1, key_length * heads * units))
    return _ADDITIVE_DEFAULT_CHUNK


def additive_logits(query_features, key_features, score_vector,
                    chunk_size=None):
    """Bahdanau logits `v_h . tanh(q_ih + k_jh)` computed in query chunks.

    The `(B, H, C, T_k, U)` tanh tensor exists for one chunk of `C` queries at
    a time, in the forward pass and, through a custom gradient that
    recomputes it, in the backward pass too: no `(B, T_q, T_k, U)` tensor is
    ever held beyond one chunk's worth.

    Args:
        query_features: `(B, T_q, H, U)`, the projected queries.
        key_features: `(B, T_k, H, U)`, the projected keys plus bias.
        score_vector: `(H, U)`, the `v` of each head.
        chunk_size: queries per chunk; default bounds the chunk's elements.

    Returns:
        Logits `(B, H, T_q, T_k)`.
    """
    batch, q_len, heads, units = static_or_dynamic_shape(query_features)
    k_len = static_or_dynamic_shape(key_features)[1]
    chunk = chunk_size or _additive_chunk_size(k_len, heads, units)
    single_chunk = isinstance(q_len, int) and chunk >= q_len
    if isinstance(q_len, int):
        chunk = min(chunk, max(q_len, 1))
    num_chunks = (q_len + chunk - 1) // chunk

    def to_chunks(x):
        # (B, H, T_q, ...) -> (num_chunks, B, H, chunk, ...)
        padded = _pad_axis(x, 2, 0, num_chunks * chunk - q_len)
        shape = static_or_dynamic_shape(x)
        blocks = ops.reshape(
            padded, shape[:2] + (num_chunks, chunk) + shape[3:]
        )
        return ops.moveaxis(blocks, 2, 0)

    def from_chunks(x):
        # (num_chunks, B, H, chunk, ...) -> (B, H, T_q, ...)
        x = ops.moveaxis(x, 0, 2)
        shape = static_or_dynamic_shape(x)
        x = ops.reshape(x, shape[:2] + (num_chunks * chunk,) + shape[4:])
        return x[:, :, :q_len]

    @ops.custom_gradient
    def logits_fn(queries, keys, vector):
        # queries (B, H, T_q, U), keys (B, H, T_k, U), vector (H, U).
        weights = vector[None, :, None, None, :]

        def activation(query_chunk):
            return ops.tanh(query_chunk[:, :, :, None] + keys[:, :, None])

        def chunk_grads(query_chunk, upstream_chunk, saved=None):
            tanh = activation(query_chunk) if saved is None else saved
            pre_grad = (upstream_chunk[..., None] * weights) * (
                1.0 - tanh * tanh
            )
            vector_grad = ops.sum(
                upstream_chunk[..., None] * tanh, axis=(0, 2, 3)
            )
            return ops.sum(pre_grad, axis=3), ops.sum(pre_grad, axis=2), (
                vector_grad
            )

        if single_chunk:
            # Everything fits in one chunk: keep the activation for the
            # backward pass instead of recomputing it.
            saved = activation(queries)
            logits = ops.sum(saved * weights, axis=-1)

            def grad(*args, upstream=None):
                if upstream is None:
                    (upstream,) = args
                upstream = ops.cast(upstream, queries.dtype)
                return chunk_grads(queries, upstream, saved)

            return logits, grad

        logits = from_chunks(ops.map(
            lambda query_chunk: ops.sum(
                activation(query_chunk) * weights, axis=-1
            ),
            to_chunks(queries),
        ))

        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            upstream = ops.cast(upstream, queries.dtype)
            query_chunks = to_chunks(queries)
            upstream_chunks = to_chunks(upstream)

            def backward(index, carry):
                key_grad, vector_grad, query_grad = carry
                chunk_query_grad, chunk_key_grad, chunk_vector_grad = (
                    chunk_grads(
                        ops.take(query_chunks, index, axis=0),
                        ops.take(upstream_chunks, index, axis=0),
                    )
                )
                query_grad = ops.slice_update(
                    query_grad,
                    (index, 0, 0, 0, 0),
                    ops.expand_dims(chunk_query_grad, 0),
                )
                return (key_grad + chunk_key_grad,
                        vector_grad + chunk_vector_grad, query_grad)

            key_grad, vector_grad, query_grad = ops.fori_loop(
                0,
                num_chunks,
                backward,
                (ops.zeros_like(keys), ops.zeros_like(vector),
                 ops.zeros_like(query_chunks)),
            )
            return from_chunks(query_grad), key_grad, vector_grad

        return logits, grad

    return logits_fn(
        ops.transpose(query_features, (0, 2, 1, 3)),
        ops.transpose(key_features, (0, 2, 1, 3)),
        score_vector,
    )
