"""XLA (`tf.function(jit_compile=True)`, `jax.jit`), `fit`, mixed precision
and `tf.distribute` for every attention layer."""

import keras
import numpy as np
import pytest

import reference as ref
import keras_selfattn as ksa
from backend import compiled, numpy, tensorflow_only

FACTORIES = {
    "self_attention": lambda **kw: ksa.SelfAttention(**kw),
    "multi_head": lambda **kw: ksa.MultiHead(2, 4, **kw),
    "local_window": lambda **kw: ksa.LocalWindow(2, 4, window_size=3, **kw),
    "additive": lambda **kw: ksa.Additive(num_heads=2, **kw),
}


def call(layer, x, mask, causal=True, **kwargs):
    if isinstance(layer, ksa.MultiHead):
        return layer(x, query_mask=mask, value_mask=mask, use_causal_mask=causal, **kwargs)
    return layer(x, mask=mask, use_causal_mask=causal, **kwargs)


@pytest.mark.parametrize("name", FACTORIES)
def test_jit_compiled_call_equals_eager(rng, name):
    layer = FACTORIES[name]()
    x = rng.normal(size=(2, 10, 8)).astype("float32")
    mask = ref.random_padding_mask(rng, 2, 10, 1)
    eager = np.asarray(call(layer, x, mask))
    xla = compiled(lambda a, m: call(layer, a, m))
    np.testing.assert_allclose(numpy(xla(x, mask)), eager, atol=1e-5)


def stacked_model(seed=0):
    keras.utils.set_random_seed(seed)
    ids = keras.Input((12,), dtype="int32")
    x = keras.layers.Embedding(40, 8, mask_zero=True)(ids)
    for name, factory in FACTORIES.items():
        kwargs = {"units": 8} if name in ("self_attention", "additive") else {}
        x = keras.layers.Add()([x, factory(**kwargs)(x)])
    x = keras.layers.GlobalAveragePooling1D()(x)
    return keras.Model(ids, keras.layers.Dense(2)(x))


def toy_data(n=64):
    rng = np.random.default_rng(7)
    ids = rng.integers(1, 40, size=(n, 12))
    lengths = rng.integers(3, 13, size=n)
    ids[np.arange(12)[None] >= lengths[:, None]] = 0
    labels = (ids[:, 0] > 20).astype("int32")
    return ids.astype("int32"), labels


def test_fit_with_xla_learns(rng):
    ids, labels = toy_data()
    model = stacked_model()
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  jit_compile=True)
    history = model.fit(ids, labels, epochs=8, batch_size=16, verbose=0)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses))
    assert losses[-1] < losses[0]


@tensorflow_only
def test_mirrored_strategy_step_equals_single_device_step(mirrored_strategy):
    ids, labels = toy_data(32)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    single = stacked_model(seed=1)
    single.compile(keras.optimizers.SGD(0.1), loss)
    single.fit(ids, labels, epochs=1, batch_size=32, shuffle=False, verbose=0)

    with mirrored_strategy.scope():
        mirrored = stacked_model(seed=1)
        mirrored.compile(keras.optimizers.SGD(0.1), loss)
    mirrored.fit(ids, labels, epochs=1, batch_size=32, shuffle=False, verbose=0)
    for a, b in zip(single.get_weights(), mirrored.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-5)


def large_logit_inputs(layer, rng, target=1e4):
    """Inputs scaled so the largest float64 logit is about `target`."""
    x = rng.normal(size=(2, 9, 8))
    layer.build((None, None, 8))
    if isinstance(layer, ksa.Additive):
        vector = numpy(layer.score_vector)
        layer.score_vector.assign(vector * target / np.abs(vector).sum(-1, keepdims=True))
        return x.astype("float32")
    q = ref.project(x, layer.query_dense.kernel)
    k = ref.project(x, layer.key_dense.kernel)
    heads = q.shape[2]
    logits = np.einsum("bthk,bshk->bhts", q, ref.repeat_heads(k, heads)) / np.sqrt(q.shape[-1])
    return (x * np.sqrt(target / np.abs(logits).max())).astype("float32")


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize("name", FACTORIES)
def test_mixed_precision_with_logits_near_1e4(rng, name, policy):
    layer = FACTORIES[name](dtype=policy)
    x = large_logit_inputs(layer, rng)
    mask = np.ones((2, 9), bool)
    mask[1, 5:] = False
    out, weights = call(layer, x, mask, causal=False, return_attention_scores=True)
    assert keras.backend.standardize_dtype(out.dtype) == policy.split("_")[1]
    w = numpy(weights).astype(np.float32)
    assert np.all(np.isfinite(numpy(out).astype(np.float32))) and np.all(np.isfinite(w))
    # Masked keys get exactly nothing; every valid row sums to 1.
    assert np.all(w[1, :, :, 5:] == 0)
    np.testing.assert_allclose(w.sum(-1)[0], 1.0, atol=1e-2)
    np.testing.assert_allclose(w.sum(-1)[1, :, :5], 1.0, atol=1e-2)

    # Against float64: equal on rows whose top two logits differ by more than
    # the compute dtype resolves at 1e4 (bfloat16: 64, float16: 8).
    allowed = mask[:, None, :, None] & mask[:, None, None, :]
    if isinstance(layer, ksa.LocalWindow):
        allowed = allowed & ref.allowed_positions(1, 9, 9, window=layer.window_size)
    logits = np.where(allowed, reference_logits(layer, x), -np.inf)
    top_two = np.sort(logits, -1)[..., -2:]
    resolution = 64.0 if policy == "mixed_bfloat16" else 8.0
    with np.errstate(invalid="ignore"):  # rows with a single key: -inf - -inf
        clear = ((top_two[..., 1] - top_two[..., 0]) > 4 * resolution) & mask[:, None, :]
    assert clear.mean() > 0.4
    expected = ref.softmax_rows(logits, allowed)
    np.testing.assert_allclose(w[clear], expected[clear], atol=2e-2)


def reference_logits(layer, x):
    if isinstance(layer, ksa.Additive):
        a = ref.project(x, layer.query_dense.kernel)
        c = ref.project(x, layer.key_dense.kernel)
        return np.einsum("bijhu,hu->bhij", np.tanh(a[:, :, None] + c[:, None]), ref.as64(layer.score_vector))
    q = ref.project(x, layer.query_dense.kernel)
    k = ref.repeat_heads(ref.project(x, layer.key_dense.kernel), q.shape[2])
    return np.einsum("bthk,bshk->bhts", q, k) / np.sqrt(q.shape[-1])
