"""`MultiHead` is a drop-in for `keras.layers.MultiHeadAttention`."""

import inspect

import keras
import numpy as np
import pytest

import reference as ref
from backend import BACKEND, run_as_a_step
from keras_selfattn import LocalWindow, MultiHead

ARGUMENT_SPACE = [
    dict(num_heads=2, key_dim=4),
    dict(num_heads=3, key_dim=5, value_dim=2),
    dict(num_heads=2, key_dim=4, use_bias=False),
    dict(num_heads=2, key_dim=4, output_shape=6),
    dict(num_heads=2, key_dim=4, output_shape=(2, 3)),
    dict(num_heads=2, key_dim=4, sliding_window=3),
    dict(num_heads=2, key_dim=4, use_gate=True),
    dict(num_heads=2, key_dim=3, attention_axes=(2,)),
    dict(num_heads=2, key_dim=3, attention_axes=(1, 2)),
]


def keras_output(theirs, *args, **kwargs):
    """Keras's output. On JAX, Keras 3.15's layer hands heads whose value
    width differs from the key width to `jax.nn.dot_product_attention`,
    which refuses them (`value shape should be ...`); its path that returns
    the weights computes the same output, so the comparison reads that."""
    if BACKEND == "jax" and theirs._value_dim != theirs._key_dim:
        return theirs(*args, return_attention_scores=True, **kwargs)[0]
    return theirs(*args, **kwargs)


def paired(kwargs, query, value=None, key=None, impl="auto"):
    """Our layer and Keras's, built for these inputs' shapes (by `build`, not
    a call: the comparisons then run as one step), with Keras's weights."""
    ours = MultiHead(**kwargs, bias_initializer="random_normal", attention_impl=impl)
    theirs = keras.layers.MultiHeadAttention(**kwargs, bias_initializer="random_normal")
    shapes = [np.shape(x) for x in (query, query if value is None else value)]
    if key is not None:
        shapes.append(np.shape(key))
    theirs.build(*shapes)
    ours.build(*shapes)
    assert [w.shape for w in ours.weights] == [w.shape for w in theirs.weights]
    ours.set_weights(theirs.get_weights())
    return ours, theirs


def test_constructor_and_call_arguments_cover_keras():
    for method in ("__init__", "call"):
        keras_args = set(inspect.signature(getattr(keras.layers.MultiHeadAttention, method)).parameters)
        our_args = set(inspect.signature(getattr(MultiHead, method)).parameters)
        assert keras_args <= our_args, keras_args - our_args


# Keras builds its causal mask from axis 1 only, so causal masking is compared
# for the single-attention-axis cases.
PARITY_CASES = [(kwargs, causal) for kwargs in ARGUMENT_SPACE
                for causal in (False, True)
                if not (causal and kwargs.get("attention_axes"))]


@pytest.mark.parametrize("kwargs,causal", PARITY_CASES, ids=str)
@pytest.mark.parametrize("impl", ["dense", "blocked"])
def test_same_results_as_keras(rng, kwargs, causal, impl):
    rank4 = kwargs.get("attention_axes") is not None
    shape = (2, 3, 5, 6) if rank4 else (2, 7, 6)
    query = rng.normal(size=shape).astype("float32")
    ours, theirs = paired(kwargs, query, impl=impl)

    def both(x):
        scores = dict(use_causal_mask=causal, return_attention_scores=True)
        return (keras_output(theirs, x, x, use_causal_mask=causal),
                ours(x, use_causal_mask=causal),
                # With value passed explicitly as the same tensor (the Keras idiom) too.
                ours(x, x, use_causal_mask=causal),
                ours(x, x, **scores)[1], theirs(x, x, **scores)[1])

    expected, alone, explicit, w_ours, w_theirs = run_as_a_step(both, query)
    np.testing.assert_allclose(alone, expected, atol=2e-5)
    np.testing.assert_allclose(explicit, expected, atol=2e-5)
    np.testing.assert_allclose(w_ours, w_theirs, atol=2e-6)


@pytest.mark.parametrize("kwargs", ARGUMENT_SPACE[:7], ids=str)
@pytest.mark.parametrize("impl", ["dense", "blocked"])
def test_cross_attention_with_masks_same_as_keras(rng, kwargs, impl):
    query = rng.normal(size=(2, 5, 6)).astype("float32")
    value = rng.normal(size=(2, 8, 4)).astype("float32")
    key = rng.normal(size=(2, 8, 3)).astype("float32")
    v_mask = ref.random_padding_mask(rng, 2, 8, min_valid=1)
    attention_mask = rng.random((2, 5, 8)) < 0.8
    attention_mask[:, :, 0] = True  # Keras averages rows with no key; keep one
    ours, theirs = paired(kwargs, query, value, key, impl=impl)

    def both(q, v, k, v_mask, attention_mask):
        masks = dict(value_mask=v_mask, attention_mask=attention_mask)
        out_theirs, w_theirs = theirs(q, v, k, **masks, return_attention_scores=True)
        # Without scores, the kernel `impl` names computes the output.
        return (out_theirs, w_theirs, ours(q, v, k, **masks),
                ours(q, v, k, **masks, return_attention_scores=True)[1])

    out_theirs, w_theirs, out_ours, w_ours = run_as_a_step(
        both, query, value, key, v_mask, attention_mask)
    np.testing.assert_allclose(out_ours, out_theirs, atol=2e-5)
    np.testing.assert_allclose(w_ours, w_theirs, atol=2e-6)


def test_keras_mask_propagation_matches(rng):
    ids = np.array([[3, 4, 5, 0, 0], [1, 2, 0, 0, 0]])
    embedding = keras.layers.Embedding(10, 6, mask_zero=True)
    x = embedding(ids)
    ours, theirs = paired(dict(num_heads=2, key_dim=3), np.asarray(x))
    out_ours, out_theirs = ours(x, x), theirs(x, x)
    valid = ids != 0
    np.testing.assert_allclose(np.asarray(out_ours)[valid], np.asarray(out_theirs)[valid], atol=2e-5)
    # The output carries the query mask: a masked pooling sees valid steps only.
    inputs = keras.Input((5,), dtype="int32")
    pooled = keras.layers.GlobalAveragePooling1D()(ours(embedding(inputs)))
    model = keras.Model(inputs, pooled)
    expected = np.stack([np.asarray(out_ours)[b][valid[b]].mean(0) for b in range(2)])
    np.testing.assert_allclose(model.predict(ids, verbose=0), expected, atol=1e-5)


def test_fully_masked_rows_attend_to_nothing(rng):
    """Keras's fused path averages a query with no keys uniformly over all
    values (padding included); ours attends to nothing, so only the output
    bias remains."""
    x = rng.normal(size=(1, 4, 6)).astype("float32")
    attention_mask = np.ones((1, 4, 4), bool)
    attention_mask[0, 1] = False
    ours, theirs = paired(dict(num_heads=2, key_dim=3), x)
    out_theirs = np.asarray(theirs(x, x, attention_mask=attention_mask))
    out_ours, w_ours = ours(x, attention_mask=attention_mask, return_attention_scores=True)
    keras_uniform, _ = ref.dot_attention(
        ref.project(x, theirs.query_dense.kernel, theirs.query_dense.bias),
        ref.project(x, theirs.key_dense.kernel, theirs.key_dense.bias),
        ref.project(x, theirs.value_dense.kernel, theirs.value_dense.bias),
        np.ones((1, 1, 4, 4), bool), 0.0,
    )
    expected_keras = np.tensordot(keras_uniform, ref.as64(theirs.output_dense.kernel), 2) + ref.as64(theirs.output_dense.bias)
    np.testing.assert_allclose(out_theirs[0, 1], expected_keras[0, 1], atol=2e-5)
    np.testing.assert_array_equal(np.asarray(w_ours)[0, :, 1], 0.0)
    np.testing.assert_allclose(np.asarray(out_ours)[0, 1], ref.as64(ours.output_dense.bias), atol=1e-6)
    rows = [0, 2, 3]
    np.testing.assert_allclose(np.asarray(out_ours)[0, rows], out_theirs[0, rows], atol=2e-5)


def test_explicit_query_mask_is_honoured(rng):
    """Keras overwrites an explicit `query_mask` with the query's Keras mask."""
    x = rng.normal(size=(1, 4, 6)).astype("float32")
    layer = MultiHead(2, 3)
    query_mask = np.array([[True, True, False, True]])
    _, weights = layer(x, query_mask=query_mask, return_attention_scores=True)
    np.testing.assert_array_equal(np.asarray(weights)[0, :, 2], 0.0)
    assert np.all(np.asarray(weights)[0, :, 0].sum(-1) > 0.99)


def test_symbolic_cross_attention_score_shape():
    query = keras.Input((5, 8))
    value = keras.Input((7, 4))
    out, scores = MultiHead(3, 2)(query, value, return_attention_scores=True)
    assert out.shape == (None, 5, 8)
    assert scores.shape == (None, 3, 5, 7)


def test_flash_attention_kept_in_config():
    layer = MultiHead(2, 4, flash_attention=False)
    assert layer.get_config()["flash_attention"] is False
    assert MultiHead.from_config(layer.get_config()).flash_attention is False


@pytest.mark.parametrize("causal", [False, True])
def test_local_window_equals_multi_head_sliding_window(rng, causal):
    x = rng.normal(size=(2, 40, 16)).astype("float32")
    mask = ref.random_padding_mask(rng, 2, 40, min_valid=1)
    mh = MultiHead(4, 4, sliding_window=7, bias_initializer="random_normal")
    lw = LocalWindow(4, 4, window_size=7)
    mh(x)
    lw(x)
    lw.set_weights(mh.get_weights())
    expected = np.asarray(mh(x, query_mask=mask, use_causal_mask=causal))
    got = np.asarray(lw(x, mask=mask, use_causal_mask=causal))
    np.testing.assert_allclose(got[mask], expected[mask], atol=2e-5)
    # And both equal Keras's own sliding window.
    keras_layer = keras.layers.MultiHeadAttention(4, 4, sliding_window=7)
    keras_layer(x, x)
    keras_layer.set_weights(mh.get_weights())
    np.testing.assert_allclose(
        got[mask], np.asarray(keras_layer(x, x, query_mask=mask, value_mask=mask, use_causal_mask=causal))[mask], atol=2e-5
    )
