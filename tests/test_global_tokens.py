"""Longformer's global attention in LocalWindow: the band plus global rows and
columns, against float64 references, forward and backward, and never T x T."""

import numpy as np
import pytest
from keras import ops

import reference as ref
from backend import gradients, largest_training_tensor, run_as_a_step
from keras_selfattn import LocalWindow, kernels
from test_blocked_kernel import SCALE, random_case, tensor_inputs

CASES = {
    "plain": dict(),
    "padding": dict(padding=True),
    "causal": dict(causal=True),
    "everything": dict(padding=True, causal=True, explicit=True),
}


def band_with_global_tokens(q, k, v, masks, global_tokens, block_size=4):
    output, log_sum = kernels.blocked_attention(
        q, k, v, scale=SCALE, query_mask=masks.get("query_mask"), key_mask=masks.get("key_mask"),
        attention_mask=masks.get("attention_mask"), causal=masks.get("causal", False),
        window_size=masks["window_size"], block_size=block_size, band=True, return_log_sum=True)
    return kernels.merge_global_tokens(
        q, k, v, output, log_sum, global_tokens, masks["window_size"], SCALE,
        masks.get("query_mask"), masks.get("key_mask"), masks.get("attention_mask"),
        masks.get("causal", False))


def reference_loss(q, k, v, upstream, masks, global_tokens):
    allowed = ref.allowed_positions(
        q.shape[0], q.shape[1], k.shape[1], masks.get("query_mask"), masks.get("key_mask"),
        masks.get("attention_mask"), masks.get("causal", False), masks["window_size"],
        global_tokens=global_tokens)
    out, _ = ref.dot_attention(q, k, v, allowed, SCALE)
    return float(np.sum(out * upstream)), out


@pytest.mark.parametrize("kind", CASES)
@pytest.mark.parametrize("global_tokens", [1, 3])
def test_values_and_gradients_match_float64_reference(rng, kind, global_tokens):
    q, k, v, masks = random_case(rng, q_len=23, k_len=23, window_size=3, **CASES[kind])
    upstream = rng.normal(size=q.shape[:3] + (v.shape[-1],)).astype("float32")
    (tq, tk, tv), tensor_masks = tensor_inputs(q, k, v, masks)
    out = run_as_a_step(lambda a, b, c: band_with_global_tokens(a, b, c, tensor_masks,
                                                                global_tokens), tq, tk, tv)
    grads = gradients(lambda a, b, c: ops.sum(
        band_with_global_tokens(a, b, c, tensor_masks, global_tokens) * upstream), [tq, tk, tv])
    _, expected = reference_loss(q, k, v, upstream, masks, global_tokens)
    np.testing.assert_allclose(np.asarray(out), expected, atol=2e-5)
    # Central differences at a global row (0), a row near it and one far away.
    ref.assert_gradients_match_central_differences(
        lambda *qkv: reference_loss(*qkv, upstream, masks, global_tokens)[0], [q, k, v], grads,
        rows=[0, global_tokens + 1, 20])


def test_layer_blocked_path_equals_its_dense_path_with_padding(rng):
    layer = LocalWindow(num_heads=4, key_dim=8, window_size=8, global_tokens=1)
    x = rng.normal(size=(2, 200, 32)).astype("float32")
    mask = ref.random_padding_mask(rng, 2, 200, 150)
    layer.build(x.shape)
    # T = 200 is past the dense cut-over: the blocked kernel.
    blocked = run_as_a_step(lambda x: layer(x, mask=mask), x)
    dense, scores = run_as_a_step(lambda x: layer(x, mask=mask, return_attention_scores=True), x)
    valid = mask
    np.testing.assert_allclose(np.asarray(blocked)[valid], np.asarray(dense)[valid], atol=1e-5)
    weights = np.asarray(scores)
    # Row 0 attends to every valid key; every valid row attends to key 0.
    assert (weights[0, :, 0, :][:, valid[0]] > 0).all()
    assert (weights[0, :, valid[0], 0] > 0).all()
    # Gradients of both paths agree.
    def loss(v, dense_path):
        out = layer(v, mask=mask, return_attention_scores=dense_path)
        out = out[0] if dense_path else out
        return ops.sum(ops.sin(out) * mask.astype("float32")[..., None])

    grads = [gradients(lambda v: loss(v, dense_path), [x], layer.trainable_weights)
             for dense_path in (False, True)]
    for ours, theirs in zip(*grads):
        np.testing.assert_allclose(ours, theirs, atol=1e-4)


def test_padding_never_reaches_valid_outputs_and_empty_rows_are_finite(rng):
    layer = LocalWindow(num_heads=2, key_dim=4, window_size=4, global_tokens=2)
    x = rng.normal(size=(3, 120, 8)).astype("float32")
    mask = ref.random_padding_mask(rng, 3, 120, 40)
    mask[2] = False  # a sequence with nothing valid
    changed = np.where(mask[..., None], x, rng.normal(size=x.shape) * 100).astype("float32")
    layer.build(x.shape)
    a, b = (np.asarray(run_as_a_step(lambda v: layer(v, mask=mask), v)) for v in (x, changed))
    np.testing.assert_allclose(a[mask], b[mask], atol=1e-5)
    assert np.isfinite(a).all() and np.isfinite(b).all()


def test_no_tensor_of_the_full_score_size_in_forward_or_backward():
    batch, length, heads = 1, 4096, 4
    layer = LocalWindow(heads, 2, window_size=64, global_tokens=1)
    layer.build((batch, length, 8))
    largest = largest_training_tensor(lambda x: ops.sum(ops.square(layer(x))),
                                      (batch, length, 8), layer.trainable_weights)
    assert largest <= batch * heads * length * length // 16, largest


def test_global_tokens_are_configured_and_checked():
    layer = LocalWindow(2, 4, window_size=4, global_tokens=1)
    assert LocalWindow.from_config(layer.get_config()).global_tokens == 1
    with pytest.raises(ValueError, match="global_tokens"):
        LocalWindow(2, 4, window_size=4, global_tokens=-1)
    from keras_selfattn import TransformerEncoderBlock

    with pytest.raises(ValueError, match="needs attention='local_window'"):
        TransformerEncoderBlock(2, 8, attention="multi_head", global_tokens=1)
