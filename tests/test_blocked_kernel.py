"""The memory-efficient blocked kernel: values and gradients against float64
references, masks, fully masked rows, XLA, mixed precision, and the proof
that no `(B, H, T_q, T_k)` tensor exists in its forward or backward graph."""

import keras
import numpy as np
import pytest
from keras import ops

import reference as ref
from backend import (
    BACKEND, compiled, gradients, largest_training_tensor, numpy, run_as_a_step,
)
from keras_selfattn import MultiHead, SelfAttention, kernels

SCALE = 0.4


def blocked(q, k, v, masks, block_size):
    return kernels.blocked_attention(
        q, k, v, scale=SCALE, query_mask=masks.get("query_mask"),
        key_mask=masks.get("key_mask"),
        attention_mask=masks.get("attention_mask"),
        causal=masks.get("causal", False),
        window_size=masks.get("window_size"),
        query_offset=masks.get("query_offset", 0), block_size=block_size,
        band=masks.get("band", False),
    )


def random_case(rng, batch=2, q_len=13, k_len=11, heads=4, groups=2,
                width=5, value_width=3, **mask_kinds):
    q = rng.normal(size=(batch, q_len, heads, width))
    k = rng.normal(size=(batch, k_len, groups, width))
    v = rng.normal(size=(batch, k_len, groups, value_width))
    masks = {}
    if mask_kinds.get("padding"):
        masks["query_mask"] = ref.random_padding_mask(rng, batch, q_len, 0)
        masks["key_mask"] = ref.random_padding_mask(rng, batch, k_len, 0)
    if mask_kinds.get("explicit"):
        explicit = rng.random((batch, heads, q_len, k_len)) < 0.6
        explicit[0, 1, 3, :] = False  # one row with no key at all
        masks["attention_mask"] = explicit
    for name in ("causal", "window_size", "query_offset", "band"):
        if name in mask_kinds:
            masks[name] = mask_kinds[name]
    return q, k, v, masks


def allowed_of(q, k, masks):
    allowed = ref.allowed_positions(
        q.shape[0], q.shape[1], k.shape[1], masks.get("query_mask"),
        masks.get("key_mask"), masks.get("attention_mask"),
        masks.get("causal", False), masks.get("window_size"),
        masks.get("query_offset", 0),
    )
    return allowed


def reference_loss(q, k, v, upstream, allowed):
    out, _ = ref.dot_attention(q, k, v, allowed, SCALE)
    return float(np.sum(out * upstream)), out


def tensor_inputs(q, k, v, masks):
    """`(q, k, v)` as float32 tensors of the backend, and `masks` with the
    attention mask normalized as the layers pass it."""
    tensors = [ops.convert_to_tensor(np.asarray(x, np.float32)) for x in (q, k, v)]
    tensor_masks = dict(masks)
    if "attention_mask" in masks:
        tensor_masks["attention_mask"] = kernels.normalize_attention_mask(
            ops.convert_to_tensor(masks["attention_mask"]), q.shape[1], k.shape[1]
        )
    return tensors, tensor_masks


MASK_KINDS = {
    "none": {},
    "padding": dict(padding=True),
    "causal": dict(causal=True),
    "window": dict(window_size=3),
    "explicit": dict(explicit=True),
    "all": dict(padding=True, causal=True, window_size=4, explicit=True),
    "decoding_offset": dict(causal=True, query_offset=5, q_len=6),
    # Only the neighbour blocks a window reaches, as LocalWindow computes.
    "band": dict(band=True, window_size=3, q_len=23, k_len=23),
    "band_all": dict(band=True, window_size=4, causal=True, padding=True,
                     explicit=True, q_len=23, k_len=23),
}


@pytest.mark.parametrize("kind", MASK_KINDS)
@pytest.mark.parametrize("block_size", [4, 16])
def test_values_and_gradients_match_float64_reference(rng, kind, block_size):
    options = dict(MASK_KINDS[kind])
    q, k, v, masks = random_case(rng, **options)
    upstream = rng.normal(size=q.shape[:3] + (v.shape[-1],)).astype("float32")
    (tq, tk, tv), tensor_masks = tensor_inputs(q, k, v, masks)
    out = run_as_a_step(lambda a, b, c: blocked(a, b, c, tensor_masks, block_size), tq, tk, tv)
    grads = gradients(lambda a, b, c: ops.sum(blocked(a, b, c, tensor_masks, block_size)
                                              * upstream), [tq, tk, tv])

    allowed = allowed_of(q, k, masks)
    _, expected = reference_loss(q, k, v, upstream, allowed)
    np.testing.assert_allclose(np.asarray(out), expected, atol=2e-5)
    # Central differences of the float64 reference, at every element of
    # one query, key and value row.
    ref.assert_gradients_match_central_differences(
        lambda *qkv: reference_loss(*qkv, upstream, allowed)[0], [q, k, v], grads,
        rows=[q.shape[1] // 2])


def softmax_derivatives(q, k, v, upstream, allowed):
    """Float64 output, log-sum-exp and the gradients of `sum(output *
    upstream)` with respect to the scaled query, the keys and the values,
    written from the softmax's derivative rather than taken numerically."""
    heads, groups = q.shape[2], k.shape[2]
    scaled = ref.as64(q) * SCALE
    keys, values = ref.repeat_heads(ref.as64(k), heads), ref.repeat_heads(ref.as64(v), heads)
    logits = np.einsum("bthk,bshk->bhts", scaled, keys)
    allowed = np.broadcast_to(allowed, logits.shape)
    weights = ref.softmax_rows(logits, allowed)
    output = np.einsum("bhts,bshv->bthv", weights, values)
    log_sum = np.full(logits.shape[:3], -1e9)
    for index in np.ndindex(*logits.shape[:3]):
        if allowed[index].any():
            row = logits[index][allowed[index]]
            log_sum[index] = row.max() + np.log(np.exp(row - row.max()).sum())
    weight_grads = np.einsum("bthv,bshv->bhts", upstream, values)
    row_term = np.einsum("bthv,bthv->bht", upstream, output)
    score_grads = weights * (weight_grads - row_term[..., None])

    def per_group(x):
        return x.reshape(x.shape[:2] + (groups, heads // groups, x.shape[-1])).sum(3)

    return {
        "output": output,
        "log_sum": log_sum.transpose(0, 2, 1),
        "query": np.einsum("bhts,bshk->bthk", score_grads, keys),
        "key": per_group(np.einsum("bhts,bthk->bshk", score_grads, scaled)),
        "value": per_group(np.einsum("bhts,bthv->bshv", weights, upstream)),
    }


@pytest.mark.parametrize("kind", ["none", "all", "decoding_offset", "band", "band_all"])
def test_each_scan_alone_matches_the_softmax_derivatives(rng, kind):
    """`blocked_forward`, `blocked_query_gradient` and
    `blocked_key_value_gradient` called directly, on the kernel's layout."""
    options = dict(MASK_KINDS[kind])
    q, k, v, masks = random_case(rng, q_len=options.pop("q_len", 21), k_len=options.pop("k_len", 19),
                                 **options)
    upstream = rng.normal(size=q.shape[:3] + (v.shape[-1],)).astype("float32")
    (tq, tk, tv), tensor_masks = tensor_inputs(q, k, v, masks)
    expected = softmax_derivatives(q, k, v, upstream, allowed_of(q, k, masks))

    def scans(tq, tk, tv, upstream):
        layout = kernels.BlockLayout.create(
            tq, tk, masks.get("causal", False), masks.get("window_size"),
            masks.get("query_offset", 0), block_size=4, band=masks.get("band", False))
        block_masks = kernels.BlockMasks.create(
            layout, tensor_masks.get("query_mask"), tensor_masks.get("key_mask"),
            tensor_masks.get("attention_mask"))
        queries, keys, values = layout.pack(tq, tk, tv, SCALE)
        packed_upstream = layout.pack(upstream, tk, tv, 1.0)[0]
        output, log_sum = kernels.blocked_forward(layout, block_masks, queries, keys, values)
        row_dot = ops.sum(packed_upstream * output, axis=-1)
        gradient_inputs = (layout, block_masks, queries, keys, values, packed_upstream, log_sum,
                           row_dot)
        query_grad = kernels.blocked_query_gradient(*gradient_inputs)
        gradients = {"key_value": (layout.unpack_output(query_grad),
                                   *kernels.blocked_key_value_gradient(*gradient_inputs))}
        if layout.band:
            query_grad, key_grad, value_grad = kernels.blocked_band_gradient(*gradient_inputs)
            gradients["band, one scan"] = (layout.unpack_output(query_grad), key_grad, value_grad)
        return layout.unpack_output(output), layout.unpack_rows(log_sum), gradients

    output, log_sum, gradients = run_as_a_step(scans, tq, tk, tv, ops.convert_to_tensor(upstream))
    np.testing.assert_allclose(numpy(output), expected["output"], atol=2e-5)
    np.testing.assert_allclose(numpy(log_sum), expected["log_sum"], rtol=1e-5, atol=2e-5)
    for scans, (query_grad, key_grad, value_grad) in gradients.items():
        np.testing.assert_allclose(numpy(query_grad), expected["query"], atol=2e-5, err_msg=scans)
        for got, name in ((key_grad, "key"), (value_grad, "value")):
            got = np.transpose(np.asarray(got), (0, 2, 1, 3))[:, :k.shape[1]]
            np.testing.assert_allclose(got, expected[name], atol=2e-5, err_msg=f"{scans}: {name}")


def test_gradients_equal_dense_kernel_autodiff(rng):
    q, k, v, masks = random_case(rng, q_len=37, k_len=29, padding=True, causal=True,
                                 explicit=True)
    (tq, tk, tv), tensor_masks = tensor_inputs(q, k, v, masks)
    dense_mask = kernels.dense_attention_mask(
        37, 29, tensor_masks["query_mask"], tensor_masks["key_mask"],
        tensor_masks["attention_mask"], causal=True,
    )
    results = [
        gradients(lambda a, b, c: ops.sum(ops.sin(attend(a, b, c))), [tq, tk, tv])
        for attend in (lambda a, b, c: blocked(a, b, c, tensor_masks, 8),
                       lambda a, b, c: kernels.dot_product_attention(a, b, c, dense_mask,
                                                                     SCALE)[0])]
    for ours, dense in zip(*results):
        np.testing.assert_allclose(ours, dense, atol=1e-5)


def test_fully_masked_rows_give_zero_output_and_gradients(rng):
    q, k, v, _ = random_case(rng)
    key_mask = np.zeros((2, 11), bool)
    key_mask[1, :4] = True  # batch 0 sees no key at all
    (tq, tk, tv), _ = tensor_inputs(q, k, v, {})
    out = run_as_a_step(lambda a, b, c: blocked(a, b, c, {"key_mask": key_mask}, 4), tq, tk, tv)
    grads = gradients(lambda a, b, c: ops.sum(blocked(a, b, c, {"key_mask": key_mask}, 4) ** 2),
                      [tq, tk, tv])
    assert np.all(numpy(out)[0] == 0)
    for grad in grads:
        assert np.all(np.isfinite(grad))
    assert np.all(grads[0][0] == 0)
    assert np.all(grads[1][1, 4:] == 0)  # masked keys learn nothing


def test_compiles_with_xla_and_gives_the_same_gradients(rng):
    q, k, v, masks = random_case(rng, padding=True, causal=True)
    (tq, tk, tv), tensor_masks = tensor_inputs(q, k, v, masks)

    def loss(a, b, c):
        return ops.sum(ops.square(blocked(a, b, c, tensor_masks, 4)))

    plain = gradients(loss, [tq, tk, tv])
    xla = gradients(compiled(loss), [tq, tk, tv])
    for a, b in zip(plain, xla):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_no_tensor_of_the_full_score_size_in_forward_or_backward():
    """Every op output in the traced training step is far below B*H*T*T."""
    batch, length, heads, width = 1, 4096, 8, 2
    layer = MultiHead(heads, width, attention_impl="blocked")
    layer.build((batch, length, 16))
    full_scores = batch * heads * length * length
    largest = largest_training_tensor(
        lambda x: ops.sum(ops.square(layer(x, use_causal_mask=True))), (batch, length, 16),
        layer.trainable_weights)
    # The blocks' scores are the largest tensors: seen (so the loop bodies
    # were searched), and a small share of the full scores.
    assert full_scores // 64 <= largest <= full_scores // 8, (largest, full_scores)


def test_dense_kernel_is_what_auto_picks_for_small_scores_and_config_keeps_it():
    if BACKEND == "jax":  # XLA compiles the whole blocked loop: faster from T = 512
        assert not kernels.uses_blocked_kernel("auto", 1, 8, 256, 256)
        assert kernels.uses_blocked_kernel("auto", 1, 8, 512, 512)
    else:
        assert not kernels.uses_blocked_kernel("auto", 8, 8, 512, 512)
        assert not kernels.uses_blocked_kernel("auto", 1, 8, 4096, 4096)
    assert kernels.uses_blocked_kernel("auto", 1, 8, 8192, 4096)
    assert not kernels.uses_blocked_kernel("auto", 1, 8, None, 4096)
    layer = MultiHead(2, 4, attention_impl="blocked")
    assert MultiHead.from_config(layer.get_config()).attention_impl == "blocked"
    with pytest.raises(ValueError, match="attention_impl.*'flash'"):
        MultiHead(2, 4, attention_impl="flash")


@pytest.mark.parametrize("layer_class", [MultiHead, SelfAttention])
def test_mixed_float16_blocked_layer_matches_float32(rng, layer_class):
    x = rng.normal(size=(2, 40, 8)).astype("float32")
    make = (lambda policy: MultiHead(2, 4, attention_impl="blocked", dtype=policy)) \
        if layer_class is MultiHead else \
        (lambda policy: SelfAttention(units=6, attention_impl="blocked", dtype=policy))
    full, half = make("float32"), make("mixed_float16")
    full.build(x.shape)
    half.build(x.shape)
    half.set_weights(full.get_weights())
    expected = np.asarray(run_as_a_step(lambda x: full(x, use_causal_mask=True), x))
    out = run_as_a_step(lambda x: half(x, use_causal_mask=True), x)
    grads = gradients(
        lambda v: ops.sum(ops.cast(half(v, use_causal_mask=True), "float32") ** 2), [x],
        half.trainable_weights)
    assert keras.backend.standardize_dtype(out.dtype) == "float16"
    np.testing.assert_allclose(numpy(out).astype(np.float32), expected, atol=1e-2)
    assert all(np.all(np.isfinite(g)) for g in grads)


def test_dropout_in_training_takes_the_dense_kernel(rng):
    """The blocked kernel has no dropout; training with it falls back."""
    x = rng.normal(size=(1, 16, 8)).astype("float32")
    layer = MultiHead(2, 4, dropout=0.5, attention_impl="blocked", seed=1)
    out_train = np.asarray(layer(x, training=True))
    out_eval = np.asarray(layer(x, training=False))
    assert not np.allclose(out_train, out_eval)
    assert layer.uses_blocked_kernel(1, 16, 16, False, False)
    assert not layer.uses_blocked_kernel(1, 16, 16, True, False)
    assert keras.ops.convert_to_numpy(out_eval).shape == (1, 16, 8)


def test_a_subclass_overriding_compute_attention_is_always_called(rng):
    calls = []

    class Traced(MultiHead):
        def compute_attention(self, query, key, value, mask, training):
            calls.append(query.shape)
            return super().compute_attention(query, key, value, mask, training)

    x = rng.normal(size=(1, 12, 8)).astype("float32")
    layer = Traced(2, 4, attention_impl="blocked")
    expected = MultiHead(2, 4)
    expected.build(x.shape)
    layer.build(x.shape)
    layer.set_weights(expected.get_weights())
    np.testing.assert_allclose(np.asarray(layer(x)), np.asarray(expected(x)), atol=1e-6)
    assert calls
