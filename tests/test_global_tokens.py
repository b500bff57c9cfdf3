"""Longformer's global attention in LocalWindow: the band plus global rows and
columns, against float64 references, forward and backward, and never T x T."""

import numpy as np
import pytest
import tensorflow as tf

import reference as ref
from keras_selfattn import LocalWindow, kernels
from test_blocked_kernel import SCALE, _graphs, random_case, tf_inputs

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
    upstream = rng.normal(size=q.shape[:3] + (v.shape[-1],))
    (tq, tk, tv), tf_masks = tf_inputs(q, k, v, masks)
    with tf.GradientTape() as tape:
        tape.watch([tq, tk, tv])
        out = band_with_global_tokens(tq, tk, tv, tf_masks, global_tokens)
        loss = tf.reduce_sum(out * tf.constant(upstream, tf.float32))
    grads = [np.asarray(g) for g in tape.gradient(loss, [tq, tk, tv])]
    _, expected = reference_loss(q, k, v, upstream, masks, global_tokens)
    np.testing.assert_allclose(np.asarray(out), expected, atol=2e-5)
    # Central differences at a global row (0), a row near it and one far away.
    ref.assert_gradients_match_central_differences(
        lambda *qkv: reference_loss(*qkv, upstream, masks, global_tokens)[0], [q, k, v], grads,
        rows=[0, global_tokens + 1, 20])


def test_layer_blocked_path_equals_its_dense_path_with_padding(rng):
    layer = LocalWindow(num_heads=4, key_dim=8, window_size=8, global_tokens=1)
    x = tf.constant(rng.normal(size=(2, 200, 32)), tf.float32)
    mask = tf.constant(ref.random_padding_mask(rng, 2, 200, 150))
    blocked = layer(x, mask=mask)  # T = 200 is past the dense cut-over: the blocked kernel
    dense, scores = layer(x, mask=mask, return_attention_scores=True)
    valid = mask.numpy()
    np.testing.assert_allclose(np.asarray(blocked)[valid], np.asarray(dense)[valid], atol=1e-5)
    weights = np.asarray(scores)
    # Row 0 attends to every valid key; every valid row attends to key 0.
    assert (weights[0, :, 0, :][:, valid[0]] > 0).all()
    assert (weights[0, :, valid[0], 0] > 0).all()
    # Gradients of both paths agree.
    grads = []
    for dense_path in (False, True):
        with tf.GradientTape() as tape:
            tape.watch(x)
            out = layer(x, mask=mask, return_attention_scores=dense_path)
            out = out[0] if dense_path else out
            loss = tf.reduce_sum(tf.sin(out) * tf.cast(mask, tf.float32)[..., None])
        grads.append(tape.gradient(loss, [x] + layer.trainable_weights))
    for ours, theirs in zip(*grads):
        np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), atol=1e-4)


def test_padding_never_reaches_valid_outputs_and_empty_rows_are_finite(rng):
    layer = LocalWindow(num_heads=2, key_dim=4, window_size=4, global_tokens=2)
    x = rng.normal(size=(3, 120, 8)).astype("float32")
    mask = ref.random_padding_mask(rng, 3, 120, 40)
    mask[2] = False  # a sequence with nothing valid
    changed = np.where(mask[..., None], x, rng.normal(size=x.shape) * 100).astype("float32")
    a, b = (np.asarray(layer(tf.constant(v), mask=tf.constant(mask))) for v in (x, changed))
    np.testing.assert_allclose(a[mask], b[mask], atol=1e-5)
    assert np.isfinite(a).all() and np.isfinite(b).all()


def test_no_tensor_of_the_full_score_size_in_forward_or_backward():
    batch, length, heads = 1, 4096, 4
    layer = LocalWindow(heads, 2, window_size=64, global_tokens=1)
    layer.build((batch, length, 8))

    @tf.function
    def train_step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(tf.square(layer(x)))
        return tape.gradient(loss, [x] + layer.trainable_weights)

    graph = train_step.get_concrete_function(tf.TensorSpec((batch, length, 8))).graph
    largest = 0
    for body in _graphs(graph):
        for op in body.get_operations():
            for output in op.outputs:
                if output.shape.rank is not None and output.shape.is_fully_defined():
                    largest = max(largest, int(np.prod(output.shape)))
    assert largest <= batch * heads * length * length // 16, largest


def test_global_tokens_are_configured_and_checked():
    layer = LocalWindow(2, 4, window_size=4, global_tokens=1)
    assert LocalWindow.from_config(layer.get_config()).global_tokens == 1
    with pytest.raises(ValueError, match="global_tokens"):
        LocalWindow(2, 4, window_size=4, global_tokens=-1)
    from keras_selfattn import TransformerEncoderBlock

    with pytest.raises(ValueError, match="needs attention='local_window'"):
        TransformerEncoderBlock(2, 8, attention="multi_head", global_tokens=1)
