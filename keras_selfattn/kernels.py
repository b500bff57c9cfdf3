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
                  query_offset=0, global_tokens=0):
    """Boolean `(T_q, T_k)` mask for causal and sliding-window attention.

    Query `i` stands at absolute position `i + query_offset` (non-zero while
    decoding with a cache); key `j` at position `j`. Causal allows `j <= i`;
    a window of `w` allows `abs(i - j) < w`, and with `global_tokens` `g`
    also `i < g` or `j < g` (Longformer's global attention: the first `g`
    tokens see every token and every token sees them). Returns `None` when
    none applies.
    """
    return positions_mask(
        ops.arange(query_length, dtype="int32") + query_offset,
        ops.arange(key_length, dtype="int32"),
        causal, window_size, global_tokens,
    )


def positions_mask(query_positions, key_positions, causal=False,
                   window_size=None, global_tokens=0):
    """`position_mask` for given int32 query `(n,)` and key `(m,)` positions."""
    if not causal and window_size is None:
        return None
    query_positions = ops.expand_dims(query_positions, -1)
    key_positions = ops.expand_dims(key_positions, 0)
    mask = None
    if causal:
        mask = combine_masks(
            mask, ops.greater_equal(query_positions, key_positions)
        )
    if window_size is not None:
        in_window = ops.less(ops.abs(query_positions - key_positions),
                             window_size)
        if global_tokens:
            in_window = ops.logical_or(in_window, ops.logical_or(
                ops.less(query_positions, global_tokens),
                ops.less(key_positions, global_tokens),
            ))
        mask = combine_masks(mask, in_window)
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
                         window_size=None, query_offset=0, global_tokens=0):
    """Merges padding, causal, window and explicit masks into one dense mask.

    Args:
        query_length, key_length: `T_q` and `T_k`.
        query_mask: `(B, T_q)` padding mask of the queries, or `None`.
        key_mask: `(B, T_k)` padding mask of the keys, or `None`.
        attention_mask: explicit mask, already normalized to 4 dimensions.
        causal, window_size, query_offset, global_tokens: see
            `position_mask`.

    Returns:
        A boolean tensor broadcastable to `(B, H, T_q, T_k)`, or `None`.
    """
    masks = [attention_mask]
    if query_mask is not None:
        masks.append(ops.cast(query_mask, "bool")[:, None, :, None])
    if key_mask is not None:
        masks.append(ops.cast(key_mask, "bool")[:, None, None, :])
    positions = position_mask(
        query_length, key_length, causal, window_size, query_offset,
        global_tokens,
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


# Elements of one block's float32 scores in the blocked kernel: 32 MB,
# small enough that a few live temporaries per block stay far below the
# dense kernel's `(B, H, T_q, T_k)` tensors, large enough to keep the
# matmuls efficient.
_BLOCK_SCORE_ELEMENTS = 1 << 23
# With `"auto"`, the blocked kernel takes over above this many score
# elements (512 MB in float32; 8 heads at T = 4096). Below it the dense
# kernel is faster on the CPU (6 matmuls where the blocked one recomputes to
# do 9: 0.9 s against 1.3 s for 8 heads at T = 4096) and its weights are
# affordable to hold.
BLOCKED_MIN_SCORE_ELEMENTS = 1 << 27
ATTENTION_IMPLEMENTATIONS = ("auto", "dense", "blocked")
# Smallest block of the banded blocked kernel: below it the loop's
# per-block overhead outweighs computing a wider band than the window needs.
_BAND_MIN_BLOCK = 64


def check_attention_impl(attention_impl):
    if attention_impl not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(
            "`attention_impl` must be one of "
            f"{ATTENTION_IMPLEMENTATIONS}. Received: "
            f"attention_impl={attention_impl!r}"
        )
    return attention_impl


def uses_blocked_kernel(attention_impl, batch, heads, query_length,
                        key_length):
    """Whether `attention_impl` (`"auto"|"dense"|"blocked"`) means blocked.

    `"auto"` picks the blocked kernel when the lengths are known while
    tracing and the `(B, H, T_q, T_k)` scores would exceed
    `BLOCKED_MIN_SCORE_ELEMENTS` (an unknown batch counts as 1).
    """
    if attention_impl != "auto":
        return attention_impl == "blocked"
    if not isinstance(query_length, int) or not isinstance(key_length, int):
        return False
    batch = batch if isinstance(batch, int) else 1
    return batch * heads * query_length * key_length > (
        BLOCKED_MIN_SCORE_ELEMENTS
    )


def attention_block_size(rows_per_position, length):
    """Positions per block so that one block holds about
    `_BLOCK_SCORE_ELEMENTS` scores: a power of two in `[16, 512]`."""
    if not isinstance(length, int) or not isinstance(rows_per_position, int):
        return 128
    size = _BLOCK_SCORE_ELEMENTS // max(1, rows_per_position * length)
    return int(min(512, max(16, 2 ** int(math.log2(max(size, 1))))))


def _in_order(body, blocks, like):
    """`[body(block) for block in blocks]`, stacked, one block at a time.

    `blocks` is a dict of tensors stacked on axis 0. `ops.map` is
    `tf.map_fn` on TensorFlow, which runs up to 10 iterations at once and
    so holds 10 blocks' scores; `ops.scan` runs them in order. The
    TensorFlow backend's scan writes its outputs into arrays shaped like the
    carry, so the carry is the last output, `like` its initial value; and
    it fails on several inputs of unknown length, so it scans block indices
    and each step takes its block.
    """
    def step(carry, index):
        del carry
        output = body({
            name: ops.take(stacked, index, axis=0)
            for name, stacked in blocks.items()
        })
        return output, output

    count = ops.shape(next(iter(blocks.values())))[0]
    return ops.scan(step, like, ops.arange(count, dtype="int32"))[1]


def _blocks(x, axis, block, num_blocks):
    """Pads `axis` to `num_blocks * block` and moves the blocks to axis 0."""
    shape = static_or_dynamic_shape(x)
    padded = _pad_axis(x, axis, 0, num_blocks * block - shape[axis])
    split = shape[:axis] + (num_blocks, block) + shape[axis + 1:]
    return ops.moveaxis(ops.reshape(padded, split), axis, 0)


def _pad_bool(mask, axis, length):
    shape = static_or_dynamic_shape(mask)
    padded = _pad_axis(ops.cast(mask, "int32"), axis, 0, length - shape[axis])
    return ops.cast(padded, "bool")


def _grouped_mask(query_positions, key_positions, causal, window_size,
                  query_mask=None, key_mask=None, explicit=None,
                  query_length=None, key_length=None, groups=1):
    """The mask of a block as `(B|1, G|1, R|1, n_q, n_k)`, or `None`.

    `query_mask` is `(B, n_q)`, `key_mask` `(B, n_k)`, `explicit`
    `(B|1, H|1, n_q, n_k)`. Positions outside `[0, query_length)` and
    `[0, key_length)` (padding of the last block, or neighbour blocks past
    either end) are masked when those lengths are given.
    """
    masks = []
    positions = positions_mask(
        query_positions, key_positions, causal, window_size
    )
    if positions is not None:
        masks.append(positions[None, None, None])
    if query_length is not None:
        inside = _inside(query_positions, query_length)
        masks.append(inside[None, None, None, :, None])
    if key_length is not None:
        inside = _inside(key_positions, key_length)
        masks.append(inside[None, None, None, None, :])
    if query_mask is not None:
        masks.append(query_mask[:, None, None, :, None])
    if key_mask is not None:
        masks.append(key_mask[:, None, None, None, :])
    if explicit is not None:
        lead, heads, rows, cols = static_or_dynamic_shape(explicit)
        if heads == 1:
            masks.append(explicit[:, :, None])
        else:
            masks.append(ops.reshape(
                explicit, (lead, groups, heads // groups, rows, cols)
            ))
    return combine_masks(*masks)


def _inside(positions, length):
    return ops.logical_and(
        ops.greater_equal(positions, 0), ops.less(positions, length)
    )


def _neighbours(x, axis, block, num_blocks, offsets):
    """For each block along `axis`, its neighbour blocks side by side.

    Block `i` gets blocks `i + o - 1` for `o` in `offsets` (zeros outside
    the sequence). Returns the blocks on axis 0: `x.shape` with `axis`
    replaced by `len(offsets) * block`, behind `num_blocks`.
    """
    shape = static_or_dynamic_shape(x)
    padded = _pad_axis(x, axis, block, (num_blocks + 1) * block - shape[axis])
    split = ops.reshape(
        padded, shape[:axis] + (num_blocks + 2, block) + shape[axis + 1:]
    )
    index = [slice(None)] * (len(shape) + 1)
    spans = []
    for offset in offsets:
        index[axis] = slice(offset, offset + num_blocks)
        spans.append(split[tuple(index)])
    return ops.moveaxis(ops.concatenate(spans, axis=axis + 1), axis, 0)


def _neighbour_positions(block, num_blocks, offsets):
    """Positions `(num_blocks, len(offsets) * block)` of `_neighbours`."""
    starts = ops.arange(num_blocks, dtype="int32") * block
    return ops.concatenate(
        [(starts + (offset - 1) * block)[:, None]
         + ops.arange(block, dtype="int32")[None] for offset in offsets],
        axis=1,
    )


def blocked_attention(query, key, value, scale=None, query_mask=None,
                      key_mask=None, attention_mask=None, causal=False,
                      window_size=None, query_offset=0, block_size=None,
                      band=False, return_log_sum=False):
    """Scaled dot-product attention that never holds `(B, H, T_q, T_k)`.

    Queries are processed in blocks, so each block's softmax is exact; only
    the output and one log-sum-exp per query row are kept. The gradient
    (FlashAttention-2's) recomputes each block's weights from that
    log-sum-exp: one pass over query blocks gives the query gradient, one
    over key blocks the key and value gradients, so the backward pass holds
    no `T_q x T_k` tensor either and no loop carries an accumulator. Masks
    follow `dense_attention_mask`, combined by AND; rows with no allowed
    key give zero output and zero gradients; the softmax runs in float32.

    With `band=True` (self-attention with a `window_size`, as in
    `LocalWindow`) a query block meets only the key blocks its window can
    reach, and a key block only the query blocks that can reach it, so the
    work and the memory grow with `T * window_size`.

    Args:
        query: `(B, T_q, H, K)`.
        key: `(B, T_k, G, K)`, `G` dividing `H`.
        value: `(B, T_k, G, V)`.
        scale: multiplies the logits; default `1 / sqrt(K)`.
        query_mask, key_mask: `(B, T_q)` and `(B, T_k)` padding masks.
        attention_mask: explicit mask normalized to `(B|1, H|1, T_q, T_k)`.
        causal, window_size, query_offset: see `position_mask`.
        block_size: positions per block; default from `attention_block_size`
            (with `band`, the window size or `_BAND_MIN_BLOCK`, whichever is
            larger).
        band: restrict each block to its window's neighbour blocks; needs
            `window_size`, `T_q == T_k` and no `query_offset`.
        return_log_sum: also return each row's log-sum-exp of its allowed
            logits, differentiable, so that a caller can merge this
            attention with attention over other keys
            (`merge_global_tokens`).

    Returns:
        The output `(B, T_q, H, V)`, and with `return_log_sum` the float32
        log-sum-exp `(B, T_q, H)` (`_MASKED_LOGIT` on rows with no allowed
        key). There is no dropout on this path; the layers use the dense
        kernel when dropout is active.
    """
    batch, q_len, heads, key_width = static_or_dynamic_shape(query)
    k_len = static_or_dynamic_shape(key)[1]
    groups, value_width = key.shape[2], value.shape[-1]
    ratio = heads // groups
    dtype = query.dtype
    if scale is None:
        scale = 1.0 / math.sqrt(key_width)
    if band:
        if window_size is None:
            raise ValueError("`band=True` needs a `window_size`.")
        q_block = k_block = max(window_size, block_size or _BAND_MIN_BLOCK)
    else:
        rows = (batch if isinstance(batch, int) else 1) * heads
        q_block = block_size or attention_block_size(rows, k_len)
        k_block = block_size or attention_block_size(rows, q_len)
    num_q_blocks = (q_len + q_block - 1) // q_block
    num_k_blocks = (k_len + k_block - 1) // k_block
    q_padded = num_q_blocks * q_block
    k_padded = num_k_blocks * k_block
    # Key pass: the query blocks that see key block j; query pass: the key
    # blocks query block i sees.
    query_side = (1, 2) if causal else (0, 1, 2)
    key_side = (0, 1) if causal else (0, 1, 2)

    query = ops.multiply(query, ops.cast(scale, dtype))
    # (B, T, H, K) -> (B, G, R, T_pad, K): the R query heads sharing a key
    # head become rows of one matmul against that key head.
    queries = ops.transpose(
        ops.reshape(
            _pad_axis(query, 1, 0, q_padded - q_len),
            (batch, q_padded, groups, ratio, key_width),
        ),
        (0, 2, 3, 1, 4),
    )
    keys = _pad_axis(ops.transpose(key, (0, 2, 1, 3)), 2, 0, k_padded - k_len)
    values = _pad_axis(
        ops.transpose(value, (0, 2, 1, 3)), 2, 0, k_padded - k_len
    )
    query_positions = ops.arange(q_padded, dtype="int32") + query_offset
    key_positions = ops.arange(k_padded, dtype="int32")
    if query_mask is not None:
        query_mask = _pad_bool(query_mask, 1, q_padded)
    if key_mask is not None:
        key_mask = _pad_bool(key_mask, 1, k_padded)
    if attention_mask is not None:
        lead = static_or_dynamic_shape(attention_mask)[:2]
        attention_mask = _pad_bool(
            _pad_bool(
                ops.broadcast_to(attention_mask, lead + (q_len, k_len)),
                2, q_padded,
            ),
            3, k_padded,
        )

    # What each pass reads per block (stacked on axis 0, the scan's) and
    # what it reads whole: the other side, whole or as neighbour blocks.
    query_pass = {"query_positions": _blocks(
        query_positions, 0, q_block, num_q_blocks)}
    query_pass_whole = {"key_positions": key_positions}
    key_pass = {"key_positions": _blocks(
        key_positions, 0, k_block, num_k_blocks)}
    key_pass_whole = {"query_positions": query_positions}
    if query_mask is not None:
        query_pass["query_mask"] = _blocks(query_mask, 1, q_block, num_q_blocks)
        key_pass_whole["query_mask"] = query_mask
    if key_mask is not None:
        key_pass["key_mask"] = _blocks(key_mask, 1, k_block, num_k_blocks)
        query_pass_whole["key_mask"] = key_mask
    if band:
        query_pass["key_positions"] = _neighbour_positions(
            k_block, num_k_blocks, key_side
        )
        key_pass["query_positions"] = _neighbour_positions(
            q_block, num_q_blocks, query_side
        )
        if key_mask is not None:
            query_pass["key_mask"] = _neighbours(
                key_mask, 1, k_block, num_k_blocks, key_side
            )
        if query_mask is not None:
            key_pass["query_mask"] = _neighbours(
                query_mask, 1, q_block, num_q_blocks, query_side
            )
        if attention_mask is not None:
            own_queries = query_pass["query_positions"][:, :, None]
            own_keys = key_pass["key_positions"][:, None, :]
            query_pass["explicit"] = ops.moveaxis(_band_of_dense_mask(
                attention_mask, q_padded,
                own_queries, query_pass["key_positions"][:, None, :],
            ), 2, 0)
            key_pass["explicit"] = ops.moveaxis(_band_of_dense_mask(
                attention_mask, q_padded,
                key_pass["query_positions"][:, :, None], own_keys,
            ), 2, 0)
    elif attention_mask is not None:
        query_pass["explicit"] = _blocks(
            attention_mask, 2, q_block, num_q_blocks
        )
        key_pass["explicit"] = _blocks(
            attention_mask, 3, k_block, num_k_blocks
        )
    # Padding of the last block and neighbours past either end.
    query_limit = q_len if band else None
    key_limit = k_len if band or not (
        isinstance(k_len, int) and k_padded == k_len) else None

    def part(block, whole, name):
        return block[name] if name in block else whole.get(name)

    def query_block_mask(block):
        return _grouped_mask(
            block["query_positions"],
            part(block, query_pass_whole, "key_positions"),
            causal, window_size, block.get("query_mask"),
            part(block, query_pass_whole, "key_mask"), block.get("explicit"),
            query_limit, key_limit, groups,
        )

    def key_block_mask(block):
        mask = _grouped_mask(
            part(block, key_pass_whole, "query_positions"),
            block["key_positions"], causal, window_size,
            part(block, key_pass_whole, "query_mask"), block.get("key_mask"),
            block.get("explicit"), query_limit, key_limit, groups,
        )
        # (.., R, n_q, n_k) -> (.., n_k, R, n_q), the key pass's layout.
        return None if mask is None else ops.transpose(mask, (0, 1, 4, 2, 3))

    def rows_of(x):
        """(B, G, R, n, D) -> (B, G, R * n, D), the matmul's rows."""
        shape = static_or_dynamic_shape(x)
        return ops.reshape(x, shape[:2] + (shape[2] * shape[3], shape[4]))

    def transposed(x):
        return ops.transpose(x, (0, 1, 3, 2))

    def logits(left, right, shape, mask):
        """`left @ right` in float32, shaped `shape` and masked."""
        scores = ops.reshape(
            ops.cast(ops.matmul(left, right), "float32"), shape
        )
        return scores if mask is None else ops.where(
            mask, scores, _MASKED_LOGIT
        )

    key_span = (len(key_side) * k_block) if band else k_padded
    query_span = (len(query_side) * q_block) if band else q_padded

    def query_block_shape(width):
        return (batch, groups, ratio, q_block, width)

    key_block_shape = (batch, groups, k_block, ratio, query_span)

    @ops.custom_gradient
    def attend(queries, keys, values):
        # queries (B, G, R, T_pad, K), keys (B, G, T_pad, K), values
        # (B, G, T_pad, V).
        query_pass["query"] = _blocks(queries, 3, q_block, num_q_blocks)
        if band:
            query_pass["keys"] = _neighbours(
                keys, 2, k_block, num_k_blocks, key_side
            )
            query_pass["values"] = _neighbours(
                values, 2, k_block, num_k_blocks, key_side
            )
        else:
            query_pass_whole["keys"] = keys
            query_pass_whole["values"] = values

        def block_logits(block):
            return logits(
                rows_of(block["query"]),
                transposed(part(block, query_pass_whole, "keys")),
                query_block_shape(key_span), query_block_mask(block),
            )

        def forward(block):
            scores = block_logits(block)
            row_max = ops.max(scores, axis=-1, keepdims=True)
            weights = ops.exp(scores - row_max)
            row_sum = ops.sum(weights, axis=-1, keepdims=True)
            output = ops.matmul(
                rows_of(ops.cast(weights, dtype)),
                part(block, query_pass_whole, "values"),
            )
            output = ops.reshape(
                ops.cast(output, "float32"), query_block_shape(value_width)
            ) / row_sum
            # A row with no allowed key: zero output, and a log-sum-exp of
            # -1e9 (read as 0 when the weights are recomputed, so that
            # exp(-1e9 - 0) is 0 too).
            row_has_key = row_max > _MASKED_LOGIT / 2
            output = ops.where(row_has_key, output, 0.0)
            log_sum = ops.where(
                row_has_key, row_max + ops.log(row_sum), _MASKED_LOGIT
            )
            return ops.cast(output, dtype), ops.squeeze(log_sum, -1)

        output_blocks, log_sum_blocks = _in_order(
            forward, query_pass,
            (ops.zeros(query_block_shape(value_width), dtype),
             ops.zeros(query_block_shape(1)[:-1], "float32")),
        )
        output = _unblock(output_blocks, 3)
        log_sum = _unblock(log_sum_blocks, 3)

        def grad(*args, upstream=None):
            upstream, log_sum_upstream = (
                args if upstream is None else tuple(upstream))
            upstream = ops.cast(upstream, dtype)
            # D = rowsum(dO * O) - dL: the softmax gradient's row term, less
            # the log-sum-exp's own gradient (dL/dS_ij = P_ij).
            row_dot = ops.sum(
                ops.cast(upstream, "float32") * ops.cast(output, "float32"),
                axis=-1,
            )
            if log_sum_upstream is not None:
                row_dot = row_dot - ops.cast(log_sum_upstream, "float32")
            offsets = ops.where(log_sum > _MASKED_LOGIT / 2, log_sum, 0.0)

            def query_gradient(block):
                weights = ops.exp(
                    block_logits(block) - block["log_sum"][..., None]
                )
                weight_grads = ops.reshape(
                    ops.cast(ops.matmul(
                        rows_of(block["upstream"]),
                        transposed(part(block, query_pass_whole, "values")),
                    ), "float32"),
                    query_block_shape(key_span),
                )
                score_grads = weights * (
                    weight_grads - block["row_dot"][..., None]
                )
                return ops.reshape(
                    ops.matmul(
                        rows_of(ops.cast(score_grads, dtype)),
                        part(block, query_pass_whole, "keys"),
                    ),
                    query_block_shape(key_width),
                )

            query_grad = _unblock(_in_order(
                query_gradient,
                {
                    **query_pass,
                    "upstream": _blocks(upstream, 3, q_block, num_q_blocks),
                    "log_sum": _blocks(offsets, 3, q_block, num_q_blocks),
                    "row_dot": _blocks(row_dot, 3, q_block, num_q_blocks),
                },
                ops.zeros(query_block_shape(key_width), dtype),
            ), 3)

            key_pass["key"] = _blocks(keys, 2, k_block, num_k_blocks)
            key_pass["value"] = _blocks(values, 2, k_block, num_k_blocks)
            sides = {"queries": queries, "upstream": upstream,
                     "log_sum": offsets, "row_dot": row_dot}
            for name, x in sides.items():
                if band:
                    key_pass[name] = _neighbours(
                        x, 3, q_block, num_q_blocks, query_side
                    )
                else:
                    key_pass_whole[name] = x

            def key_value_gradient(block):
                query_rows = rows_of(part(block, key_pass_whole, "queries"))
                upstream_rows = rows_of(
                    part(block, key_pass_whole, "upstream")
                )
                scores = logits(
                    block["key"], transposed(query_rows), key_block_shape,
                    key_block_mask(block),
                )
                # (B, G, R, n) -> (B, G, 1, R, n), against key rows.
                weights = ops.exp(
                    scores - part(block, key_pass_whole, "log_sum")[:, :, None]
                )
                weight_rows = ops.reshape(
                    weights, (batch, groups, k_block, ratio * query_span)
                )
                value_grad = ops.matmul(
                    ops.cast(weight_rows, dtype), upstream_rows
                )
                weight_grads = ops.reshape(
                    ops.cast(ops.matmul(
                        block["value"], transposed(upstream_rows)
                    ), "float32"),
                    key_block_shape,
                )
                row_dot_t = part(block, key_pass_whole, "row_dot")[:, :, None]
                score_grads = ops.reshape(
                    weights * (weight_grads - row_dot_t),
                    (batch, groups, k_block, ratio * query_span),
                )
                key_grad = ops.matmul(
                    ops.cast(score_grads, dtype), query_rows
                )
                return key_grad, value_grad

            key_grad, value_grad = _in_order(
                key_value_gradient, key_pass,
                (ops.zeros((batch, groups, k_block, key_width), dtype),
                 ops.zeros((batch, groups, k_block, value_width), dtype)),
            )
            return query_grad, _unblock(key_grad, 2), _unblock(value_grad, 2)

        return (output, log_sum), grad

    output, log_sum = attend(queries, keys, values)
    # (B, G, R, T_pad, V) -> (B, T, H, V)
    output = ops.reshape(
        ops.transpose(output, (0, 3, 1, 2, 4)),
        (batch, q_padded, heads, value_width),
    )[:, :q_len]
    if not return_log_sum:
        return output
    # (B, G, R, T_pad) -> (B, T, H)
    log_sum = ops.reshape(
        ops.transpose(log_sum, (0, 3, 1, 2)), (batch, q_padded, heads)
    )
    return output, log_sum[:, :q_len]


def merge_global_tokens(query, key, value, band_output, band_log_sum,
                        global_tokens, window_size, scale=None,
                        query_mask=None, key_mask=None, attention_mask=None,
                        causal=False):
    """Adds Longformer's global attention to sliding-window self-attention.

    The first `global_tokens` (`g`) positions attend to every position, and
    every position attends to them (Beltagy et al., 2020, 3.1). Given the
    band's output and log-sum-exp (`blocked_attention(..., band=True,
    return_log_sum=True)`), each row's softmax is extended over the global
    keys its band does not hold, exactly, by merging the two log-sum-exps;
    the `g` global rows are recomputed against every key. The extra work is
    `(T, g)` and `(g, T)` scores: never `T x T`. Masks as in
    `dense_attention_mask`; gradients by autodiff (through the band's
    log-sum-exp, which `blocked_attention` differentiates).

    Args:
        query, key, value: `(B, T, H, K)`, `(B, T, G, K)`, `(B, T, G, V)`.
        band_output: `(B, T, H, V)`, the band attention's output.
        band_log_sum: `(B, T, H)` float32, its log-sum-exp per row.
        global_tokens: `g`, a positive int.
        window_size: the band's half-width.
        scale, query_mask, key_mask, attention_mask, causal: as for
            `blocked_attention`.

    Returns:
        `(B, T, H, V)`: the attention over the band and the global tokens.
    """
    batch, length, heads, key_width = static_or_dynamic_shape(query)
    if scale is None:
        scale = 1.0 / math.sqrt(key_width)
    g = global_tokens
    scaled = ops.multiply(query, ops.cast(scale, query.dtype))
    # Columns: every query against the global keys outside its band.
    positions = ops.arange(length, dtype="int32")
    outside_band = ops.greater_equal(
        ops.abs(positions[:, None] - positions[None, :g]), window_size)
    if causal:
        outside_band = ops.logical_and(
            outside_band, ops.greater_equal(positions[:, None],
                                            positions[None, :g]))
    columns_mask = [outside_band[None, None]]
    if query_mask is not None:
        columns_mask.append(ops.cast(query_mask, "bool")[:, None, :, None])
    if key_mask is not None:
        columns_mask.append(ops.cast(key_mask, "bool")[:, None, None, :g])
    if attention_mask is not None:
        columns_mask.append(attention_mask[:, :, :, :g])
    columns_mask = combine_masks(*columns_mask)
    logits = ops.cast(dot_product_logits(scaled, key[:, :g]), "float32")
    logits = ops.where(columns_mask, logits, _MASKED_LOGIT)
    row_max = ops.max(logits, axis=-1, keepdims=True)
    has_key = row_max > _MASKED_LOGIT / 2
    weights = ops.where(columns_mask, ops.exp(logits - row_max), 0.0)
    total = ops.sum(weights, axis=-1, keepdims=True)
    columns_log_sum = ops.where(
        has_key, row_max + ops.log(ops.where(has_key, total, 1.0)),
        _MASKED_LOGIT)
    weights = weights / ops.where(has_key, total, 1.0)
    columns_output = ops.cast(
        weighted_values(ops.cast(weights, value.dtype), value[:, :g]),
        "float32")
    # (B, H, T, 1) -> (B, T, H, 1), the outputs' layout.
    columns_log_sum = ops.transpose(columns_log_sum, (0, 2, 1, 3))
    band_log_sum = ops.cast(band_log_sum, "float32")[..., None]
    merged_log_sum = ops.logaddexp(band_log_sum, columns_log_sum)
    merged = (ops.exp(band_log_sum - merged_log_sum)
              * ops.cast(band_output, "float32")
              + ops.exp(columns_log_sum - merged_log_sum) * columns_output)
    # Rows: the global queries against every key.
    rows_mask = dense_attention_mask(
        g, length, None if query_mask is None else query_mask[:, :g],
        key_mask,
        None if attention_mask is None else attention_mask[:, :, :g],
        causal=causal)
    rows, _ = dot_product_attention(query[:, :g], key, value, mask=rows_mask,
                                    scale=scale)
    return ops.concatenate(
        [rows, ops.cast(merged[:, g:], band_output.dtype)], axis=1)


def _unblock(blocks, axis):
    """Inverse of `_blocks` (without removing the padding)."""
    x = ops.moveaxis(blocks, 0, axis)
    shape = static_or_dynamic_shape(x)
    return ops.reshape(
        x, shape[:axis] + (shape[axis] * shape[axis + 1],) + shape[axis + 2:]
    )


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
    offsets = (0, 1) if causal else (0, 1, 2)
    return ops.moveaxis(_neighbours(x, 1, block, num_blocks, offsets), 0, 1)


def banded_positions(length, window_size, causal):
    """Positions of the blocked layout used by `banded_attention`.

    Returns `(num_blocks, query_positions, key_positions)`, the positions
    being int32 `(num_blocks, w, 1)` and `(num_blocks, 1, n * w)`, where keys
    outside `[0, T)` have positions out of that range.
    """
    block = window_size
    num_blocks = (length + block - 1) // block
    query_positions = _neighbour_positions(block, num_blocks, (1,))
    key_positions = _neighbour_positions(
        block, num_blocks, (0, 1) if causal else (0, 1, 2)
    )
    return num_blocks, query_positions[:, :, None], key_positions[:, None, :]


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
    rows = ops.clip(query_positions, 0, length - 1)
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
