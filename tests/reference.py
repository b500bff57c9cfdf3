"""Independent float64 NumPy implementations the layers are checked against."""

import numpy as np


def as64(x):
    return np.asarray(x, dtype=np.float64)


def project(x, kernel, bias=None):
    """`(B, T, d) x (d, *out) -> (B, T, *out)`."""
    kernel = as64(kernel)
    out = np.tensordot(as64(x), kernel, axes=([-1], [0]))
    return out if bias is None else out + as64(bias)


def allowed_positions(batch, q_len, k_len, query_mask=None, key_mask=None,
                      attention_mask=None, causal=False, window=None,
                      query_offset=0, global_tokens=0):
    """Boolean `(B, 1|H, T_q, T_k)` built with plain loops over positions;
    the first `global_tokens` positions are outside any window."""
    allowed = np.ones((batch, 1, q_len, k_len), dtype=bool)
    for i in range(q_len):
        for j in range(k_len):
            position = i + query_offset
            if causal and j > position:
                allowed[:, :, i, j] = False
            is_global = position < global_tokens or j < global_tokens
            if window is not None and abs(position - j) >= window and not is_global:
                allowed[:, :, i, j] = False
    if query_mask is not None:
        allowed &= np.asarray(query_mask, bool)[:, None, :, None]
    if key_mask is not None:
        allowed &= np.asarray(key_mask, bool)[:, None, None, :]
    if attention_mask is not None:
        m = np.asarray(attention_mask, bool)
        while m.ndim < 4:
            m = m[None] if m.ndim == 2 else m[:, None]
        allowed = allowed & m
    return allowed


def softmax_rows(logits, allowed):
    """Softmax over allowed keys; rows with no allowed key are all zero."""
    logits = as64(logits)
    allowed = np.broadcast_to(allowed, logits.shape)
    weights = np.zeros_like(logits)
    for index in np.ndindex(*logits.shape[:-1]):
        row_allowed = allowed[index]
        if not row_allowed.any():
            continue
        row = logits[index][row_allowed]
        e = np.exp(row - row.max())
        weights[index][row_allowed] = e / e.sum()
    return weights


def repeat_heads(x, num_heads):
    """`(B, S, G, K)` -> `(B, S, H, K)`, head `h` using group `h // (H/G)`."""
    return np.repeat(x, num_heads // x.shape[2], axis=2)


def dot_attention(q, k, v, allowed, scale):
    """`q (B,T,H,K)`, `k (B,S,G,K)`, `v (B,S,G,V)` -> out `(B,T,H,V)`, weights."""
    heads = q.shape[2]
    k, v = repeat_heads(as64(k), heads), repeat_heads(as64(v), heads)
    logits = np.einsum("bthk,bshk->bhts", as64(q), k) * scale
    weights = softmax_rows(logits, allowed)
    return np.einsum("bhts,bshv->bthv", weights, v), weights


def additive_attention(a, c, vector, value, allowed):
    """Bahdanau: logits[b,h,i,j] = sum_u vector[h,u] tanh(a[b,i,h,u] + c[b,j,h,u])."""
    a, c, vector = as64(a), as64(c), as64(vector)
    logits = np.einsum(
        "bijhu,hu->bhij", np.tanh(a[:, :, None] + c[:, None]), vector
    )
    weights = softmax_rows(logits, allowed)
    return np.einsum("bhij,bjhv->bihv", weights, as64(value)), weights


def multi_head(layer, query, value=None, key=None, allowed=None, scale=None):
    """Reference of `MultiHead`/`LocalWindow`/Keras MHA from the layer's weights."""
    value = query if value is None else value
    key = value if key is None else key

    def proj(dense, x):
        return project(x, dense.kernel, dense.bias if layer.use_bias else None)

    q = proj(layer.query_dense, query)
    k = proj(layer.key_dense, key)
    v = proj(layer.value_dense, value)
    scale = scale or 1.0 / np.sqrt(q.shape[-1])
    out, weights = dot_attention(q, k, v, allowed, scale)
    out_dense = layer.output_dense
    result = np.tensordot(out, as64(out_dense.kernel), axes=([-2, -1], [0, 1]))
    if layer.use_bias:
        result = result + as64(out_dense.bias)
    return result, weights


def random_padding_mask(rng, batch, length, min_valid=0):
    lengths = rng.integers(min_valid, length + 1, size=batch)
    return np.arange(length)[None, :] < lengths[:, None]


def assert_gradients_match_central_differences(loss, inputs, grads, rows, eps=1e-6, atol=2e-4):
    """Checks `grads` (of `loss` with respect to each of `inputs`) against
    float64 central differences of `loss(*inputs)`, at every element of the
    given `rows` (axis 1, batch entry 1) of each input."""
    for which, grad in enumerate(grads):
        for row in rows:
            for index in np.ndindex(grad.shape[2:]):
                full = (1, row) + index
                bumped = [x.copy() for x in inputs]
                bumped[which][full] += eps
                lowered = [x.copy() for x in inputs]
                lowered[which][full] -= eps
                numeric = (loss(*bumped) - loss(*lowered)) / (2 * eps)
                assert abs(numeric - grad[full]) < atol, (which, full, numeric, grad[full])
