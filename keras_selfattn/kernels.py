"""Attention computations shared by every layer, written with `keras.ops` only.

Tensors use the layout the projections produce:
query `(B, T_q, H, K)`, key `(B, T_k, G, K)`, value `(B, T_k, G, V)`, where `G`
divides `H` (grouped-query attention; `G == H` is ordinary multi-head).
Attention weights are `(B, H, T_q, T_k)`; a mask is boolean, `True` = may
attend, broadcastable to the weights.

The blocked kernel, top to bottom: `BlockLayout` fixes the blocks once (sizes,
padding, a band's neighbours) and packs inputs; `BlockMasks` pads the masks;
`block_mask` is the one masking rule; `blocked_forward` and the backward scans
(`blocked_query_gradient` with `blocked_key_value_gradient`, or a band's one
`blocked_band_gradient`) map tensors to tensors; `blocked_attention` joins them.
"""

import dataclasses
import math

import keras
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
    if not causal and window_size is None:
        return None
    return positions_mask(
        ops.arange(query_length, dtype="int32") + query_offset,
        ops.arange(key_length, dtype="int32"),
        causal, window_size, global_tokens,
    )


def positions_mask(query_positions, key_positions, causal=False,
                   window_size=None, global_tokens=0):
    """`position_mask` for given int32 query `(..., n)` and key `(..., m)`
    positions; returns `(..., n, m)`."""
    if not causal and window_size is None:
        return None
    query_positions = ops.expand_dims(query_positions, -1)
    key_positions = ops.expand_dims(key_positions, -2)
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
    weights = attention_weights(query, key, mask, scale)
    combined = dropout(weights) if dropout is not None else weights
    return weighted_values(combined, value), weights


def attention_weights(query, key, mask=None, scale=None):
    """The weights `(B, H, T_q, T_k)` of `dot_product_attention`, without
    combining values."""
    if scale is None:
        scale = 1.0 / math.sqrt(query.shape[-1])
    query = ops.multiply(query, ops.cast(scale, query.dtype))
    return masked_softmax(dot_product_logits(query, key), mask, query.dtype)


def attention_mask_rows(attention_mask, start, stop):
    """Rows `start:stop` of a normalized `(B|1, H|1, T_q|1, T_k)` mask (one
    broadcast row stays as it is), or `None`."""
    if attention_mask is None or attention_mask.shape[-2] == 1:
        return attention_mask
    return attention_mask[:, :, start:stop]


# Elements of one block's float32 scores in the blocked kernel: 32 MB,
# small enough that a few live temporaries per block stay far below the
# dense kernel's `(B, H, T_q, T_k)` tensors, large enough to keep the
# matmuls efficient.
_BLOCK_SCORE_ELEMENTS = 1 << 23
# With `"auto"`, the blocked kernel takes over above this many score
# elements, per Keras backend, from forward+backward steps of 8 heads of 64
# on 2 CPU cores. TensorFlow: 2^27 (512 MB in float32; 8 heads at
# T = 4096); below it the dense kernel is faster (6 matmuls where the
# blocked one recomputes to do 9: 0.9 s against 1.3 s at T = 4096) and its
# weights are affordable to hold. JAX, where XLA compiles the whole blocked
# loop under `jax.jit`: 2^20; the blocked kernel is faster from T = 512
# (46 against 49 ms; 148 against 204 ms at 1024, 0.47 against 0.84 s at
# 2048, 1.5 against 3.4 s at 4096), the dense one at 256 (24 against 38 ms).
BLOCKED_MIN_SCORE_ELEMENTS = {"tensorflow": 1 << 27, "jax": 1 << 20}
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
    tracing and the `(B, H, T_q, T_k)` scores would exceed the backend's
    `BLOCKED_MIN_SCORE_ELEMENTS` (an unknown batch counts as 1).
    """
    if attention_impl != "auto":
        return attention_impl == "blocked"
    if not isinstance(query_length, int) or not isinstance(key_length, int):
        return False
    batch = batch if isinstance(batch, int) else 1
    return batch * heads * query_length * key_length > blocked_min_score_elements()


def blocked_min_score_elements():
    """This backend's `BLOCKED_MIN_SCORE_ELEMENTS` (TensorFlow's where it
    was not measured)."""
    return BLOCKED_MIN_SCORE_ELEMENTS.get(
        keras.backend.backend(), BLOCKED_MIN_SCORE_ELEMENTS["tensorflow"])


def attention_block_size(rows_per_position, length):
    """Positions per block so that one block holds about
    `_BLOCK_SCORE_ELEMENTS` scores: a power of two in `[16, 512]`."""
    if not isinstance(length, int) or not isinstance(rows_per_position, int):
        return 128
    size = _BLOCK_SCORE_ELEMENTS // max(1, rows_per_position * length)
    return int(min(512, max(16, 2 ** int(math.log2(max(size, 1))))))


@dataclasses.dataclass(frozen=True)
class BlockLayout:
    """How the blocked kernel cuts queries and keys into blocks.

    The kernel works on queries `(B, G, R, T_q, K)` (`R = H // G` query
    heads share each key head, so they become rows of one matmul), keys
    `(B, G, T_k, K)` and values `(B, G, T_k, V)`, each padded to whole
    blocks. Without a band every query block meets every key. With `band`
    (self-attention with a window no wider than a block) query block `i`
    meets key blocks `i - 1, i, i + 1` (causal: `i - 1, i`), and key block
    `j` the query blocks that can reach it.

    Build it with `BlockLayout.create`; `pack` and `unpack_*` move tensors
    between the layers' `(B, T, H, K)` layout and the kernel's.
    """

    batch: object
    groups: int
    ratio: int
    query_length: object
    key_length: object
    query_block: int
    key_block: int
    causal: bool = False
    window_size: object = None
    query_offset: object = 0
    band: bool = False

    @classmethod
    def create(cls, query, key, causal=False, window_size=None,
               query_offset=0, block_size=None, band=False):
        """The layout for `query (B, T_q, H, K)` and `key (B, T_k, G, K)`.

        Block sizes come from a memory budget (`attention_block_size`)
        unless `block_size` is given; a band's blocks are at least its
        window (so that neighbours cover it) and `_BAND_MIN_BLOCK`.
        """
        batch, query_length, heads, _ = static_or_dynamic_shape(query)
        key_length = static_or_dynamic_shape(key)[1]
        groups = key.shape[2]
        if band:
            if window_size is None:
                raise ValueError("`band=True` needs a `window_size`.")
            query_block = key_block = max(
                window_size, block_size or _BAND_MIN_BLOCK)
        else:
            rows = (batch if isinstance(batch, int) else 1) * heads
            query_block = block_size or attention_block_size(rows, key_length)
            key_block = block_size or attention_block_size(rows, query_length)
        return cls(batch, groups, heads // groups, query_length, key_length,
                   query_block, key_block, causal, window_size, query_offset,
                   band)

    @property
    def heads(self):
        return self.groups * self.ratio

    @property
    def num_query_blocks(self):
        return (self.query_length + self.query_block - 1) // self.query_block

    @property
    def num_key_blocks(self):
        return (self.key_length + self.key_block - 1) // self.key_block

    @property
    def query_padded(self):
        return self.num_query_blocks * self.query_block

    @property
    def key_padded(self):
        return self.num_key_blocks * self.key_block

    @property
    def key_neighbours(self):
        """In a band, the key blocks query block `i` meets, as offsets from
        block `i - 1`."""
        return (0, 1) if self.causal else (0, 1, 2)

    @property
    def query_neighbours(self):
        """In a band, the query blocks that meet key block `j`, as offsets
        from block `j - 1`."""
        return (1, 2) if self.causal else (0, 1, 2)

    @property
    def keys_per_query_block(self):
        if self.band:
            return len(self.key_neighbours) * self.key_block
        return self.key_padded

    @property
    def queries_per_key_block(self):
        if self.band:
            return len(self.query_neighbours) * self.query_block
        return self.query_padded

    @property
    def query_limit(self):
        """The query length, where blocks hold positions outside it that
        must be masked (a band's neighbours past either end); else `None`.
        Padded query rows of a full layout are cut off after the scan."""
        return self.query_length if self.band else None

    @property
    def key_limit(self):
        """The key length, where blocks hold keys outside it; else `None`."""
        padded = not (isinstance(self.key_length, int)
                      and self.key_padded == self.key_length)
        return self.key_length if self.band or padded else None

    def query_positions(self):
        return ops.arange(self.query_padded, dtype="int32") + self.query_offset

    def key_positions(self):
        return ops.arange(self.key_padded, dtype="int32")

    def query_block_shape(self, width=None):
        """`(B, G, R, n_q)` of one query block, with `width` appended."""
        shape = (self.batch, self.groups, self.ratio, self.query_block)
        return shape if width is None else shape + (width,)

    def pack(self, query, key, value, scale):
        """`(B, T, H|G, ·)` inputs to the kernel's padded layout; the query
        is multiplied by `scale`."""
        batch, width = self.batch, query.shape[-1]
        query = ops.multiply(query, ops.cast(scale, query.dtype))
        queries = ops.transpose(
            ops.reshape(
                _pad_axis(query, 1, 0, self.query_padded - self.query_length),
                (batch, self.query_padded, self.groups, self.ratio, width),
            ),
            (0, 2, 3, 1, 4),
        )
        extra_keys = self.key_padded - self.key_length
        keys = _pad_axis(ops.transpose(key, (0, 2, 1, 3)), 2, 0, extra_keys)
        values = _pad_axis(
            ops.transpose(value, (0, 2, 1, 3)), 2, 0, extra_keys)
        return queries, keys, values

    def unpack_output(self, output):
        """`(B, G, R, T_pad, V)` to `(B, T_q, H, V)`."""
        output = ops.reshape(
            ops.transpose(output, (0, 3, 1, 2, 4)),
            (self.batch, self.query_padded, self.heads, output.shape[-1]),
        )
        return output[:, :self.query_length]

    def unpack_rows(self, rows):
        """`(B, G, R, T_pad)` to `(B, T_q, H)`."""
        rows = ops.reshape(
            ops.transpose(rows, (0, 3, 1, 2)),
            (self.batch, self.query_padded, self.heads),
        )
        return rows[:, :self.query_length]


@dataclasses.dataclass(frozen=True)
class BlockMasks:
    """The masks of the blocked kernel, padded to whole blocks.

    `query` is `(B, T_q)`, `key` `(B, T_k)`, `explicit`
    `(B|1, H|1, T_q, T_k)`; each is boolean or `None`.
    """

    query: object = None
    key: object = None
    explicit: object = None

    @classmethod
    def create(cls, layout, query_mask=None, key_mask=None,
               attention_mask=None):
        if query_mask is not None:
            query_mask = _pad_bool(query_mask, 1, layout.query_padded)
        if key_mask is not None:
            key_mask = _pad_bool(key_mask, 1, layout.key_padded)
        if attention_mask is not None:
            lead = static_or_dynamic_shape(attention_mask)[:2]
            full = ops.broadcast_to(
                attention_mask,
                lead + (layout.query_length, layout.key_length))
            attention_mask = _pad_bool(
                _pad_bool(full, 2, layout.query_padded), 3, layout.key_padded)
        return cls(query_mask, key_mask, attention_mask)


def block_mask(layout, query_positions, key_positions, query_mask=None,
               key_mask=None, explicit=None):
    """Which keys each query of a block may attend, the one masking rule of
    the blocked and banded kernels.

    Args:
        layout: the `BlockLayout` (causal, window, lengths to check).
        query_positions, key_positions: int32 `(..., n_q)` and `(..., n_k)`.
        query_mask, key_mask: `(..., B, n_q)` and `(..., B, n_k)`, or `None`.
        explicit: `(..., B|1, H|1, n_q, n_k)`, or `None`.

    The leading `...` is empty for one block of a scan, or a blocks axis
    when every block is computed at once.

    Returns:
        A boolean `(..., B|1, G|1, R|1, n_q, n_k)`, or `None` when nothing
        is masked.
    """
    masks = []
    positions = positions_mask(query_positions, key_positions, layout.causal,
                               layout.window_size)
    if positions is not None:
        masks.append(positions[..., None, None, None, :, :])
    if layout.query_limit is not None:
        inside = _inside(query_positions, layout.query_limit)
        masks.append(inside[..., None, None, None, :, None])
    if layout.key_limit is not None:
        inside = _inside(key_positions, layout.key_limit)
        masks.append(inside[..., None, None, None, None, :])
    if query_mask is not None:
        masks.append(query_mask[..., :, None, None, :, None])
    if key_mask is not None:
        masks.append(key_mask[..., :, None, None, None, :])
    if explicit is not None:
        shape = static_or_dynamic_shape(explicit)
        if shape[-3] == 1:
            masks.append(explicit[..., None, :, :])
        else:
            masks.append(ops.reshape(
                explicit,
                shape[:-3] + (layout.groups, layout.ratio) + shape[-2:],
            ))
    return combine_masks(*masks)


# The time axis of each tensor a scan reads, by the side it belongs to:
# queries and what has one value per query row, and keys and values.
_QUERY_SIDE = {"queries": 3, "upstream": 3, "log_sum": 3, "row_dot": 3,
               "row_has_key": 3,
               "query_positions": 0, "query_mask": 1}
_KEY_SIDE = {"keys": 2, "values": 2, "key_positions": 0, "key_mask": 1}


def _scan_inputs(layout, masks, over_queries, **tensors):
    """Splits the inputs of a scan over query blocks (`over_queries`) or key
    blocks into `(per_block, whole)`.

    `per_block` tensors are stacked on a new axis 0, one block per step:
    the scanned side's blocks, and in a band the neighbour blocks of the
    other side that each block meets. `whole` tensors (the other side,
    without a band) are read entire by every step.
    """
    tensors = {
        "query_positions": layout.query_positions(),
        "key_positions": layout.key_positions(),
        "query_mask": masks.query,
        "key_mask": masks.key,
        **tensors,
    }
    if over_queries:
        own, other = _QUERY_SIDE, _KEY_SIDE
        own_block, num_own = layout.query_block, layout.num_query_blocks
        other_block, num_other = layout.key_block, layout.num_key_blocks
        neighbours = layout.key_neighbours
    else:
        own, other = _KEY_SIDE, _QUERY_SIDE
        own_block, num_own = layout.key_block, layout.num_key_blocks
        other_block, num_other = layout.query_block, layout.num_query_blocks
        neighbours = layout.query_neighbours
    per_block, whole = {}, {}
    for name, x in tensors.items():
        if x is None:
            continue
        if name in own:
            per_block[name] = _blocks(x, own[name], own_block, num_own)
        elif not layout.band:
            whole[name] = x
        elif name.endswith("_positions"):
            # Neighbours past either end keep their (out of range)
            # positions, which the mask then excludes.
            per_block[name] = _neighbour_positions(
                other_block, num_other, neighbours)
        else:
            per_block[name] = _neighbours(
                x, other[name], other_block, num_other, neighbours)
    if masks.explicit is not None:
        if layout.band:
            # Only the band of the `(T, T)` mask, read without copying it.
            query_positions = per_block["query_positions"][:, :, None]
            key_positions = per_block["key_positions"][:, None, :]
            per_block["explicit"] = ops.moveaxis(_band_of_dense_mask(
                masks.explicit, layout.query_padded, query_positions,
                key_positions), 2, 0)
        elif over_queries:
            per_block["explicit"] = _blocks(
                masks.explicit, 2, layout.query_block, layout.num_query_blocks)
        else:
            per_block["explicit"] = _blocks(
                masks.explicit, 3, layout.key_block, layout.num_key_blocks)
    return per_block, whole


def _scan_blocks(step, per_block, whole, like):
    """`step(inputs)` for each block in order, stacked on axis 0.

    `inputs` holds that block's slice of every `per_block` tensor and every
    `whole` tensor. `ops.map` is `tf.map_fn` on TensorFlow, which runs up to
    10 iterations at once and so holds 10 blocks' scores; `ops.scan` runs
    them in order. The TensorFlow backend's scan writes its outputs into
    arrays shaped like the carry, so the carry is the last output, `like`
    its initial value; and it fails on several inputs of unknown length, so
    it scans block indices and each step takes its block.
    """
    def scan_step(carry, index):
        del carry
        inputs = dict(whole)
        for name, stacked in per_block.items():
            inputs[name] = ops.take(stacked, index, axis=0)
        output = step(inputs)
        return output, output

    count = ops.shape(next(iter(per_block.values())))[0]
    return ops.scan(scan_step, like, ops.arange(count, dtype="int32"))[1]


def _rows(x):
    """`(..., R, n, D)` to `(..., R * n, D)`: the query heads sharing a key
    head become rows of one matmul."""
    shape = static_or_dynamic_shape(x)
    return ops.reshape(x, shape[:-3] + (shape[-3] * shape[-2], shape[-1]))


def _swap_last(x):
    return ops.swapaxes(x, -1, -2)


def _query_block_scores(layout, inputs):
    """Float32 masked logits of a query block against the keys it meets:
    `(..., B, G, R, n_q, n_k)`."""
    queries, keys = inputs["queries"], inputs["keys"]
    shape = static_or_dynamic_shape(queries)[:-1] + (keys.shape[-2],)
    scores = ops.reshape(
        ops.cast(ops.matmul(_rows(queries), _swap_last(keys)), "float32"),
        shape,
    )
    mask = _step_mask(layout, inputs)
    return scores if mask is None else ops.where(mask, scores, _MASKED_LOGIT)


def _step_mask(layout, inputs):
    """`block_mask` of one scan step's (or every block's) inputs."""
    return block_mask(
        layout, inputs["query_positions"], inputs["key_positions"],
        inputs.get("query_mask"), inputs.get("key_mask"),
        inputs.get("explicit"),
    )


def _row_has_key(row_max):
    return row_max > _MASKED_LOGIT / 2


def _block_weights(scores, row_has_key=None):
    """The softmax of a query block's rows, which hold all their keys.

    TensorFlow's fused softmax runs 1.2-2.6x faster on these blocks than
    `exp(scores - max)` written out (bench notes in bench/RESULTS.md).
    `row_has_key` (float32 `(..., n_q)`, 0 on rows with no allowed key)
    zeroes the rows that would otherwise spread over masked keys.
    """
    shape = static_or_dynamic_shape(scores)
    if len(shape) > 5:
        # Every block at once (`banded_attention`): TensorFlow's CPU softmax
        # takes at most 5 dimensions.
        weights = ops.reshape(
            ops.softmax(ops.reshape(scores, (-1, shape[-1])), axis=-1), shape)
    else:
        weights = ops.softmax(scores, axis=-1)
    return weights if row_has_key is None else weights * row_has_key[..., None]


def _rows_may_be_empty(layout, masks):
    """Whether some query row of the layout may have no allowed key (causal
    rows and a band's rows always see themselves; rows of padding beyond
    the sequence get a zero upstream gradient)."""
    window_without_band = layout.window_size is not None and not layout.band
    return window_without_band or any(
        mask is not None for mask in (masks.query, masks.key, masks.explicit))


def _row_has_key_input(layout, masks, log_sum):
    """The `row_has_key` of `_block_weights` from the forward's log-sum-exp,
    or `None` when every row has a key."""
    if not _rows_may_be_empty(layout, masks):
        return None
    return ops.cast(_row_has_key(log_sum), "float32")


def _recompute_offsets(log_sum):
    """The forward's log-sum-exp as the backward subtracts it: a row with no
    allowed key has `-1e9`, read as 0 so that its `exp(-1e9 - 0)` is 0."""
    return ops.where(_row_has_key(log_sum), log_sum, 0.0)


def blocked_forward(layout, masks, queries, keys, values):
    """The forward scan over query blocks; each block's softmax is exact.

    Args:
        layout: a `BlockLayout`; masks: its `BlockMasks`.
        queries: `(B, G, R, T_q_pad, K)`, already scaled.
        keys, values: `(B, G, T_k_pad, K)` and `(B, G, T_k_pad, V)`.

    Returns:
        `(output, log_sum)`: `(B, G, R, T_q_pad, V)` in the queries' dtype
        (zero on rows with no allowed key) and each row's float32
        log-sum-exp `(B, G, R, T_q_pad)` (`-1e9` on rows with no key).
    """
    dtype, value_width = queries.dtype, values.shape[-1]

    def step(inputs):
        scores = _query_block_scores(layout, inputs)
        weights = _block_weights(scores)
        output = ops.matmul(_rows(ops.cast(weights, dtype)), inputs["values"])
        output = ops.reshape(output, layout.query_block_shape(value_width))
        # log(sum exp(s)) = max s - log(max weight): the weight of the
        # largest score is exp(0) / sum.
        row_max = ops.max(scores, axis=-1, keepdims=True)
        has_key = _row_has_key(row_max)
        log_sum = ops.where(
            has_key,
            row_max - ops.log(ops.max(weights, axis=-1, keepdims=True)),
            _MASKED_LOGIT)
        output = ops.where(has_key, output, ops.zeros_like(output))
        return output, ops.squeeze(log_sum, -1)

    per_block, whole = _scan_inputs(layout, masks, True, queries=queries,
                                    keys=keys, values=values)
    output, log_sum = _scan_blocks(step, per_block, whole, (
        ops.zeros(layout.query_block_shape(value_width), dtype),
        ops.zeros(layout.query_block_shape(), "float32"),
    ))
    return _unblock(output, 3), _unblock(log_sum, 3)


def blocked_query_gradient(layout, masks, queries, keys, values, upstream,
                           log_sum, row_dot):
    """The query gradient, scanning query blocks and recomputing weights.

    Args:
        layout, masks, queries, keys, values: as for `blocked_forward`.
        upstream: `(B, G, R, T_q_pad, V)`, the gradient of the output.
        log_sum: `(B, G, R, T_q_pad)`, the forward's log-sum-exp.
        row_dot: `(B, G, R, T_q_pad)` float32, `rowsum(upstream * output)`
            less the gradient of `log_sum` (the softmax gradient's row term).

    Returns:
        The gradient of the (scaled) `queries`, shaped like them.
    """
    dtype, key_width = queries.dtype, queries.shape[-1]

    def step(inputs):
        weights = _block_weights(_query_block_scores(layout, inputs),
                                 inputs.get("row_has_key"))
        weight_grads = ops.matmul(_rows(inputs["upstream"]),
                                  _swap_last(inputs["values"]))
        weight_grads = ops.reshape(ops.cast(weight_grads, "float32"),
                                   static_or_dynamic_shape(weights))
        score_grads = weights * (weight_grads - inputs["row_dot"][..., None])
        query_grad = ops.matmul(_rows(ops.cast(score_grads, dtype)),
                                inputs["keys"])
        return ops.reshape(query_grad, layout.query_block_shape(key_width))

    per_block, whole = _scan_inputs(
        layout, masks, True, queries=queries, keys=keys, values=values,
        upstream=ops.cast(upstream, dtype),
        row_has_key=_row_has_key_input(layout, masks, log_sum),
        row_dot=row_dot)
    return _unblock(_scan_blocks(
        step, per_block, whole,
        ops.zeros(layout.query_block_shape(key_width), dtype)), 3)


def blocked_key_value_gradient(layout, masks, queries, keys, values,
                               upstream, log_sum, row_dot):
    """The key and value gradients, scanning key blocks.

    Each step recomputes its key block's weights against the queries that
    meet it and writes its own rows of the gradients, so no loop carries an
    accumulator. Arguments as for `blocked_query_gradient`.

    Returns:
        `(key_grad, value_grad)`, shaped like `keys` and `values`.
    """
    dtype = queries.dtype
    batch, groups, key_block = layout.batch, layout.groups, layout.key_block
    key_width, value_width = keys.shape[-1], values.shape[-1]

    def step(inputs):
        query_rows = _rows(inputs["queries"])
        upstream_rows = _rows(inputs["upstream"])
        queries_seen = static_or_dynamic_shape(inputs["queries"])[-2]
        # The key pass's scores are (B, G, n_k, R, n_q): key rows against
        # every query head sharing them.
        scores_shape = (batch, groups, key_block, layout.ratio, queries_seen)
        flat_shape = (batch, groups, key_block, layout.ratio * queries_seen)
        scores = ops.reshape(ops.cast(
            ops.matmul(inputs["keys"], _swap_last(query_rows)), "float32"),
            scores_shape)
        mask = _step_mask(layout, inputs)
        if mask is not None:
            scores = ops.where(ops.transpose(mask, (0, 1, 4, 2, 3)), scores,
                               _MASKED_LOGIT)
        weights = ops.exp(scores - inputs["log_sum"][:, :, None])
        value_grad = ops.matmul(
            ops.cast(ops.reshape(weights, flat_shape), dtype), upstream_rows)
        weight_grads = ops.reshape(ops.cast(
            ops.matmul(inputs["values"], _swap_last(upstream_rows)),
            "float32"), scores_shape)
        score_grads = weights * (weight_grads - inputs["row_dot"][:, :, None])
        key_grad = ops.matmul(
            ops.cast(ops.reshape(score_grads, flat_shape), dtype), query_rows)
        return key_grad, value_grad

    per_block, whole = _scan_inputs(
        layout, masks, False, queries=queries, keys=keys, values=values,
        upstream=ops.cast(upstream, dtype),
        log_sum=_recompute_offsets(log_sum), row_dot=row_dot)
    key_grad, value_grad = _scan_blocks(step, per_block, whole, (
        ops.zeros((batch, groups, key_block, key_width), dtype),
        ops.zeros((batch, groups, key_block, value_width), dtype),
    ))
    return _unblock(key_grad, 2), _unblock(value_grad, 2)


def blocked_band_gradient(layout, masks, queries, keys, values, upstream,
                          log_sum, row_dot):
    """All three gradients of a band in one scan over query blocks.

    A band's query block meets only its `len(layout.key_neighbours)`
    neighbour key blocks, so its share of the key and value gradients is
    that small: each step emits it beside its query gradient, and the
    shares are summed per key block after the scan. Against the two scans
    that is 5 block matmuls instead of 7, and the weights are recomputed
    once instead of twice. Arguments as for `blocked_query_gradient`.

    Returns:
        `(query_grad, key_grad, value_grad)`, shaped like the inputs.
    """
    dtype, key_width = queries.dtype, queries.shape[-1]
    value_width = values.shape[-1]
    batch, groups = layout.batch, layout.groups
    span = layout.keys_per_query_block

    def step(inputs):
        weights = _block_weights(_query_block_scores(layout, inputs),
                                 inputs.get("row_has_key"))
        upstream_rows = _rows(inputs["upstream"])
        weight_grads = ops.reshape(ops.cast(ops.matmul(
            upstream_rows, _swap_last(inputs["values"])), "float32"),
            static_or_dynamic_shape(weights))
        score_grads = ops.cast(
            weights * (weight_grads - inputs["row_dot"][..., None]), dtype)
        score_rows = _rows(score_grads)
        query_grad = ops.reshape(ops.matmul(score_rows, inputs["keys"]),
                                 layout.query_block_shape(key_width))
        # This block's shares of the gradients of the keys it met.
        key_share = ops.matmul(_swap_last(score_rows),
                               _rows(inputs["queries"]))
        value_share = ops.matmul(_swap_last(_rows(ops.cast(weights, dtype))),
                                 upstream_rows)
        return query_grad, key_share, value_share

    per_block, whole = _scan_inputs(
        layout, masks, True, queries=queries, keys=keys, values=values,
        upstream=ops.cast(upstream, dtype),
        row_has_key=_row_has_key_input(layout, masks, log_sum),
        row_dot=row_dot)
    query_grad, key_shares, value_shares = _scan_blocks(
        step, per_block, whole, (
            ops.zeros(layout.query_block_shape(key_width), dtype),
            ops.zeros((batch, groups, span, key_width), dtype),
            ops.zeros((batch, groups, span, value_width), dtype),
        ))
    return (_unblock(query_grad, 3),
            _sum_neighbour_shares(layout, key_shares),
            _sum_neighbour_shares(layout, value_shares))


def _sum_neighbour_shares(layout, shares):
    """`(num_blocks, B, G, n * block, D)` shares, query block `i`'s of key
    blocks `i + o - 1` for `o` in `layout.key_neighbours`, summed into the
    `(B, G, T_pad, D)` gradient (shares of blocks outside the sequence,
    always zero, dropped)."""
    num_blocks, batch, groups, _, width = static_or_dynamic_shape(shares)
    block = layout.key_block
    shares = ops.reshape(shares, (num_blocks, batch, groups,
                                  len(layout.key_neighbours), block, width))
    total = None
    for index, offset in enumerate(layout.key_neighbours):
        # Key block j gets query block j + 1 - offset's share.
        share = shares[:, :, :, index]
        shift = 1 - offset
        if shift > 0:
            share = _pad_axis(share[shift:], 0, 0, shift)
        elif shift < 0:
            share = _pad_axis(share[:shift], 0, -shift, 0)
        total = share if total is None else total + share
    return _unblock(total, 2)


def blocked_attention(query, key, value, scale=None, query_mask=None,
                      key_mask=None, attention_mask=None, causal=False,
                      window_size=None, query_offset=0, block_size=None,
                      band=False, return_log_sum=False):
    """Scaled dot-product attention that never holds `(B, H, T_q, T_k)`.

    Queries are processed in blocks, so each block's softmax is exact; only
    the output and one log-sum-exp per query row are kept. The gradient
    (FlashAttention-2's) recomputes each block's weights from that
    log-sum-exp: one scan over query blocks gives the query gradient, one
    over key blocks the key and value gradients, so the backward pass holds
    no `T_q x T_k` tensor either and no loop carries an accumulator (a
    band's single scan emits each block's small share of the key and value
    gradients instead: `blocked_band_gradient`). Masks
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
        kernel (or `banded_attention`) when dropout is active.
    """
    if scale is None:
        scale = 1.0 / math.sqrt(query.shape[-1])
    layout = BlockLayout.create(query, key, causal, window_size, query_offset,
                                block_size, band)
    masks = BlockMasks.create(layout, query_mask, key_mask, attention_mask)
    present = [name for name in ("query", "key", "explicit")
               if getattr(masks, name) is not None]

    # The masks are arguments, not closed over: JAX's custom gradients
    # cannot capture the tensors of an enclosing trace (`jax.jit` under
    # `jax.grad` fails to lower them), and they get no gradient.
    @ops.custom_gradient
    def attend(queries, keys, values, *mask_tensors):
        masks = BlockMasks(**dict(zip(present, mask_tensors)))
        output, log_sum = blocked_forward(layout, masks, queries, keys, values)

        def grad(*args, upstream=None):
            output_grad, log_sum_grad = _upstream_pair(args, upstream)
            output_grad = ops.cast(output_grad, queries.dtype)
            # D = rowsum(dO * O) - dL: the softmax gradient's row term, less
            # the log-sum-exp's own gradient (dL/dS_ij = P_ij).
            row_dot = ops.sum(ops.cast(output_grad, "float32")
                              * ops.cast(output, "float32"), axis=-1)
            if log_sum_grad is not None:
                row_dot = row_dot - ops.cast(log_sum_grad, "float32")
            gradient_inputs = (layout, masks, queries, keys, values,
                               output_grad, log_sum, row_dot)
            if layout.band:
                gradients = blocked_band_gradient(*gradient_inputs)
            else:
                gradients = (blocked_query_gradient(*gradient_inputs),
                             *blocked_key_value_gradient(*gradient_inputs))
            return (*gradients, *(None for _ in mask_tensors))

        return (output, log_sum), grad

    output, log_sum = attend(*layout.pack(query, key, value, scale),
                             *(getattr(masks, name) for name in present))
    output = layout.unpack_output(output)
    if not return_log_sum:
        return output
    return output, layout.unpack_rows(log_sum)


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


def _upstream_pair(args, upstream):
    """The two upstream gradients of a two-output `ops.custom_gradient`:
    TensorFlow passes them as two arguments, JAX as one tuple, and the
    documented JAX form as `upstream=`."""
    if upstream is None:
        upstream = args[0] if len(args) == 1 else args
    return tuple(upstream)


def _blocks(x, axis, block, num_blocks):
    """Pads `axis` to `num_blocks * block` and moves the blocks to axis 0."""
    shape = static_or_dynamic_shape(x)
    padded = _pad_axis(x, axis, 0, num_blocks * block - shape[axis])
    split = shape[:axis] + (num_blocks, block) + shape[axis + 1:]
    return ops.moveaxis(ops.reshape(padded, split), axis, 0)


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


def _pad_bool(mask, axis, length):
    shape = static_or_dynamic_shape(mask)
    padded = _pad_axis(ops.cast(mask, "int32"), axis, 0, length - shape[axis])
    return ops.cast(padded, "bool")


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


def _band_of_dense_mask(attention_mask, length, query_positions,
                        key_positions):
    """Reads the blocked band of a `(B|1, H|1, T, T)` mask without copying it."""
    lead = static_or_dynamic_shape(attention_mask)[:2]
    flat = ops.reshape(attention_mask, lead + (-1,))
    rows = ops.clip(query_positions, 0, length - 1)
    cols = ops.clip(key_positions, 0, length - 1)
    return ops.take(flat, rows * length + cols, axis=2)


def banded_attention(query, key, value, window_size, causal=False,
                     query_mask=None, key_mask=None, attention_mask=None,
                     scale=None, dropout=None):
    """Sliding-window self-attention over the band, every block at once.

    Query `i` sees keys `j` with `abs(i - j) < window_size` (causal:
    `i - window_size < j <= i`). The layout and the masks are those of
    `blocked_attention(..., band=True)`, but every block is computed at once
    and the weights are kept, for dropout and `return_attention_scores`:
    memory grows with `T * window_size`, never with `T * T`.

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
        blocked layout `(num_blocks, B, G, R, block, n * block)`;
        `band_to_dense` expands the latter to `(B, H, T, T)`.
    """
    if scale is None:
        scale = 1.0 / math.sqrt(query.shape[-1])
    layout = BlockLayout.create(query, key, causal, window_size, band=True)
    masks = BlockMasks.create(layout, query_mask, key_mask, attention_mask)
    queries, keys, values = layout.pack(query, key, value, scale)
    per_block, _ = _scan_inputs(layout, masks, True, queries=queries,
                                keys=keys, values=values)
    scores = _query_block_scores(layout, per_block)
    weights = _block_weights(scores, ops.cast(_row_has_key(
        ops.max(scores, axis=-1)), "float32"))
    weights = ops.cast(weights, query.dtype)
    combined = dropout(weights) if dropout is not None else weights
    output = ops.matmul(_rows(combined), per_block["values"])
    output = ops.reshape(output, static_or_dynamic_shape(per_block["queries"])
                         [:-1] + (value.shape[-1],))
    return layout.unpack_output(_unblock(output, 3)), weights


def band_to_dense(band_weights, length):
    """Expands `banded_attention`'s weights to `(B, H, T, T)`.

    Only for `return_attention_scores`; the `T * T` result is what the caller
    asked for.
    """
    num_blocks, batch, groups, ratio, block, span = static_or_dynamic_shape(
        band_weights)
    rows = ops.reshape(
        ops.transpose(band_weights, (1, 2, 3, 0, 4, 5)),
        (batch, groups * ratio, num_blocks * block, span),
    )[:, :, :length]
    query_positions = ops.arange(length, dtype="int32")[:, None]
    key_positions = ops.arange(length, dtype="int32")[None, :]
    # Query block `i` holds key blocks `i - 1` onwards.
    first_key = (query_positions // block - 1) * block
    column = key_positions - first_key
    inside = ops.logical_and(
        ops.greater_equal(column, 0), ops.less(column, span)
    )
    column = ops.clip(column, 0, span - 1)
    index = ops.broadcast_to(
        column[None, None], (batch, groups * ratio, length, length)
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
