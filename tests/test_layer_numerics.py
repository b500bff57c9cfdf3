"""Each attention layer against the float64 NumPy reference, under every mask kind."""

import numpy as np
import pytest

import reference as ref
from backend import gradients, run_as_a_step, tensorflow_only
from keras_selfattn import Additive, LocalWindow, MultiHead, SelfAttention

B, T, D = 3, 11, 8

MASK_CASES = {
    "none": dict(),
    "padding": dict(padding=True),
    "causal": dict(causal=True),
    "explicit": dict(explicit=True),
    "all": dict(padding=True, causal=True, explicit=True),
}


def make_masks(rng, case, heads=1):
    padding = ref.random_padding_mask(rng, B, T, min_valid=1) if case.get("padding") else None
    explicit = None
    if case.get("explicit"):
        explicit = rng.random((B, T, T)) < 0.7
        explicit[0, 2, :] = False  # a query row with no key at all
    return padding, explicit


def layer_outputs(layer, x, padding, explicit, causal):
    """`(output, weights)`; weights `None` when the layer is forced onto the
    blocked kernel, which returned scores would take off it. The layer is
    built by shape and called as one step (`run_as_a_step`)."""
    scores = getattr(layer, "attention_impl", "dense") != "blocked"
    layer.build(x.shape)

    def call(x, padding, explicit):
        kwargs = dict(use_causal_mask=causal, return_attention_scores=scores)
        if explicit is not None:
            kwargs["attention_mask"] = explicit
        if isinstance(layer, MultiHead):
            return layer(x, query_mask=padding, value_mask=padding, **kwargs)
        return layer(x, mask=padding, **kwargs)

    result = run_as_a_step(call, x, padding, explicit)
    if not scores:
        return np.asarray(result), None
    out, w = result
    return np.asarray(out), np.asarray(w)


def assert_weights(weights, expected):
    if weights is not None:
        np.testing.assert_allclose(weights, expected, atol=2e-6)


@pytest.mark.parametrize("case", MASK_CASES)
@pytest.mark.parametrize("use_scale", [True, False])
@pytest.mark.parametrize("impl", ["dense", "blocked"])
def test_self_attention_matches_reference(rng, case, use_scale, impl):
    x = rng.normal(size=(B, T, D)).astype("float32")
    padding, explicit = make_masks(rng, MASK_CASES[case])
    causal = MASK_CASES[case].get("causal", False)
    layer = SelfAttention(units=6, use_scale=use_scale, attention_impl=impl)
    out, weights = layer_outputs(layer, x, padding, explicit, causal)

    allowed = ref.allowed_positions(B, T, T, padding, padding, explicit, causal)
    q = ref.project(x, layer.query_dense.kernel, layer.query_dense.bias)
    k = ref.project(x, layer.key_dense.kernel, layer.key_dense.bias)
    v = ref.project(x, layer.value_dense.kernel, layer.value_dense.bias)
    expected, expected_w = ref.dot_attention(
        q, k, v, allowed, 1 / np.sqrt(6) if use_scale else 1.0
    )
    assert out.shape == (B, T, 6)
    np.testing.assert_allclose(out, expected[:, :, 0], atol=2e-5)
    assert_weights(weights, expected_w)


@pytest.mark.parametrize("case", MASK_CASES)
@pytest.mark.parametrize("kv_heads", [None, 2, 1])
@pytest.mark.parametrize("impl", ["dense", "blocked"])
def test_multi_head_matches_reference(rng, case, kv_heads, impl):
    x = rng.normal(size=(B, T, D)).astype("float32")
    padding, explicit = make_masks(rng, MASK_CASES[case])
    causal = MASK_CASES[case].get("causal", False)
    layer = MultiHead(4, 5, value_dim=3, num_key_value_heads=kv_heads,
                      bias_initializer="random_normal", attention_impl=impl)
    out, weights = layer_outputs(layer, x, padding, explicit, causal)
    allowed = ref.allowed_positions(B, T, T, padding, padding, explicit, causal)
    expected, expected_w = ref.multi_head(layer, x, allowed=allowed)
    np.testing.assert_allclose(out, expected, atol=3e-5)
    assert_weights(weights, expected_w)


@pytest.mark.parametrize("impl", ["dense", "blocked"])
def test_multi_head_cross_attention_with_key(rng, impl):
    query = rng.normal(size=(B, 5, D)).astype("float32")
    value = rng.normal(size=(B, 9, 6)).astype("float32")
    key = rng.normal(size=(B, 9, 7)).astype("float32")
    q_mask = ref.random_padding_mask(rng, B, 5, 1)
    v_mask = ref.random_padding_mask(rng, B, 9, 1)
    layer = MultiHead(2, 4, output_shape=(3, 2), bias_initializer="random_normal",
                      attention_impl=impl)
    out = layer(query, value, key, query_mask=q_mask, value_mask=v_mask)
    allowed = ref.allowed_positions(B, 5, 9, q_mask, v_mask)
    expected, expected_w = ref.multi_head(layer, query, value, key, allowed)
    assert out.shape == (B, 5, 3, 2)
    np.testing.assert_allclose(np.asarray(out), expected, atol=3e-5)
    _, weights = layer(query, value, key, query_mask=q_mask, value_mask=v_mask,
                       return_attention_scores=True)
    assert weights.shape == (B, 2, 5, 9)
    np.testing.assert_allclose(np.asarray(weights), expected_w, atol=2e-6)


# T = 11, with returned scores: windows 1 and 2 take the all-blocks band
# path, 4 and 20 (T <= 1.5 block spans) the dense-band path for short
# sequences. Without scores see the training-path test below.
@pytest.mark.parametrize("case", MASK_CASES)
@pytest.mark.parametrize("window", [1, 2, 4, 20])
def test_local_window_matches_reference(rng, case, window):
    x = rng.normal(size=(B, T, D)).astype("float32")
    padding, explicit = make_masks(rng, MASK_CASES[case])
    causal = MASK_CASES[case].get("causal", False)
    layer = LocalWindow(2, 4, window_size=window, bias_initializer="random_normal")
    out, weights = layer_outputs(layer, x, padding, explicit, causal)
    allowed = ref.allowed_positions(B, T, T, padding, padding, explicit, causal, window)
    expected, expected_w = ref.multi_head(layer, x, allowed=allowed)
    np.testing.assert_allclose(out, expected, atol=3e-5)
    np.testing.assert_allclose(weights, expected_w, atol=2e-6)


@tensorflow_only
@pytest.mark.parametrize("case", MASK_CASES)
def test_local_window_dynamic_length_takes_blockwise_path(rng, case):
    """Inside a graph with unknown T, the blockwise kernel runs for any T."""
    import tensorflow as tf

    x = rng.normal(size=(B, T, D)).astype("float32")
    padding, explicit = make_masks(rng, MASK_CASES[case])
    causal = MASK_CASES[case].get("causal", False)
    layer = LocalWindow(2, 4, window_size=6)
    layer.build((None, None, D))
    spec = tf.TensorSpec((None, None, D))
    run = tf.function(lambda v: layer(v, mask=padding, attention_mask=explicit,
                                      use_causal_mask=causal),
                      input_signature=[spec])
    allowed = ref.allowed_positions(B, T, T, padding, padding, explicit, causal, 6)
    expected, _ = ref.multi_head(layer, x, allowed=allowed)
    np.testing.assert_allclose(run(x).numpy(), expected, atol=3e-5)


def test_local_window_grouped_query(rng):
    x = rng.normal(size=(B, T, D)).astype("float32")
    layer = LocalWindow(4, 4, window_size=3, num_key_value_heads=2)
    out, weights = layer(x, use_causal_mask=True, return_attention_scores=True)
    allowed = ref.allowed_positions(B, T, T, causal=True, window=3)
    expected, expected_w = ref.multi_head(layer, x, allowed=allowed)
    np.testing.assert_allclose(np.asarray(out), expected, atol=3e-5)
    np.testing.assert_allclose(np.asarray(weights), expected_w, atol=2e-6)


@pytest.mark.parametrize("case", MASK_CASES)
@pytest.mark.parametrize("heads,window,chunk", [(1, None, None), (2, None, 4), (2, 3, 5)])
def test_additive_matches_reference(rng, case, heads, window, chunk):
    x = rng.normal(size=(B, T, D)).astype("float32")
    padding, explicit = make_masks(rng, MASK_CASES[case])
    causal = MASK_CASES[case].get("causal", False)
    layer = Additive(units=6, num_heads=heads, window_size=window,
                     query_chunk_size=chunk, bias_initializer="random_normal")
    out, weights = layer_outputs(layer, x, padding, explicit, causal)
    allowed = ref.allowed_positions(B, T, T, padding, padding, explicit, causal, window)
    a = ref.project(x, layer.query_dense.kernel, layer.query_dense.bias)
    c = ref.project(x, layer.key_dense.kernel, layer.key_dense.bias)
    v = ref.project(x, layer.value_dense.kernel, layer.value_dense.bias)
    expected, expected_w = ref.additive_attention(a, c, layer.score_vector, v, allowed)
    assert out.shape == (B, T, 6)
    np.testing.assert_allclose(out, expected.reshape(B, T, 6), atol=3e-5)
    np.testing.assert_allclose(weights, expected_w, atol=2e-6)


def test_additive_chunked_gradient_matches_unchunked(rng):
    """The custom chunked gradient equals autodiff through the plain formula."""
    from keras import ops

    x = rng.normal(size=(2, 9, D)).astype("float32")
    chunked = Additive(units=4, num_heads=2, query_chunk_size=2)
    whole = Additive(units=4, num_heads=2, query_chunk_size=9)
    chunked.build(x.shape)
    whole.build(x.shape)
    whole.set_weights(chunked.get_weights())
    grads = [gradients(lambda v: ops.sum(ops.sin(layer(v, use_causal_mask=True))), [x],
                       layer.trainable_weights)
             for layer in (chunked, whole)]
    for a, b in zip(*grads):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)

    # And against a float64 finite difference of the reference formula.
    def loss64(xx):
        a = ref.project(xx, whole.query_dense.kernel, whole.query_dense.bias)
        c = ref.project(xx, whole.key_dense.kernel, whole.key_dense.bias)
        v = ref.project(xx, whole.value_dense.kernel, whole.value_dense.bias)
        allowed = ref.allowed_positions(2, 9, 9, causal=True)
        out, _ = ref.additive_attention(a, c, whole.score_vector, v, allowed)
        return np.sin(out).sum()

    x64 = np.asarray(x, np.float64)
    eps = 1e-6
    for index in [(0, 0, 0), (1, 4, 3), (0, 8, 7)]:
        bumped = x64.copy()
        bumped[index] += eps
        lowered = x64.copy()
        lowered[index] -= eps
        numeric = (loss64(bumped) - loss64(lowered)) / (2 * eps)
        assert abs(numeric - np.asarray(grads[0][0])[index]) < 1e-3


@pytest.mark.parametrize("case", MASK_CASES)
def test_local_window_training_path_matches_reference_and_dense_gradients(rng, case):
    """Without returned scores LocalWindow runs the banded blocked kernel
    (here 3 blocks of 64): values against the float64 reference, gradients
    against autodiff through `MultiHead(sliding_window=...)`'s dense path."""
    import keras
    from keras import ops

    keras.utils.set_random_seed(0)  # the layers' weights, for a fixed tolerance
    batch, length, window = 2, 150, 5
    options = MASK_CASES[case]
    causal = options.get("causal", False)
    padding = ref.random_padding_mask(rng, batch, length, 1) if options.get("padding") else None
    explicit = rng.random((batch, length, length)) < 0.7 if options.get("explicit") else None
    x = rng.normal(size=(batch, length, D)).astype("float32")
    local = LocalWindow(2, 4, window_size=window, bias_initializer="random_normal")
    dense = MultiHead(2, 4, sliding_window=window, attention_impl="dense")
    local.build(x.shape)
    dense.build(x.shape)
    dense.set_weights(local.get_weights())
    results = []
    for layer, call in ((local, lambda v: local(v, mask=padding, attention_mask=explicit,
                                                use_causal_mask=causal)),
                        (dense, lambda v: dense(v, query_mask=padding, value_mask=padding,
                                                attention_mask=explicit,
                                                use_causal_mask=causal))):
        results.append([run_as_a_step(call, x)] + gradients(
            lambda v: ops.sum(ops.sin(call(v))), [x], layer.trainable_weights))
    allowed = ref.allowed_positions(batch, length, length, padding, padding, explicit,
                                    causal, window)
    expected, _ = ref.multi_head(local, np.asarray(x), allowed=allowed)
    np.testing.assert_allclose(np.asarray(results[0][0]), expected, atol=3e-5)
    for ours, theirs in zip(results[0][1:], results[1][1:]):
        # Summed over 300 positions in another order: float32 rounding.
        np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), rtol=1e-5, atol=2e-5)
