"""Properties on random shapes and masks, for every attention layer."""

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backend import BACKEND, gradients, run_as_a_step
from keras import ops
from keras_selfattn import Additive, LocalWindow, MultiHead, SelfAttention

LAYERS = {
    "self_attention": lambda: SelfAttention(units=6),
    "multi_head": lambda: MultiHead(2, 3),
    "multi_head_gqa": lambda: MultiHead(4, 3, num_key_value_heads=2),
    "multi_head_blocked": lambda: MultiHead(
        4, 3, num_key_value_heads=2, attention_impl="blocked"),
    "self_attention_blocked": lambda: SelfAttention(
        units=6, attention_impl="blocked"),
    "local_window": lambda: LocalWindow(2, 3, window_size=3),
    # Called without scores above T = 4: the banded blocked kernel.
    "local_window_blocked": lambda: LocalWindow(2, 3, window_size=1),
    "additive": lambda: Additive(units=6, num_heads=2, query_chunk_size=3),
}
_BUILT = {}


def layer_named(name, width):
    """One layer per kind and width, built once: hypothesis varies the inputs."""
    key = (name, width)
    if key not in _BUILT:
        layer = LAYERS[name]()
        layer.build((None, None, width))
        _BUILT[key] = layer
    return _BUILT[key]


def attend(layer, x, padding, explicit, causal):
    """`(output, weights)`; weights `None` for a layer forced onto the
    blocked kernel, which asking for them would take the layer off."""
    kwargs = dict(attention_mask=explicit, use_causal_mask=causal)
    if getattr(layer, "attention_impl", "auto") == "blocked" or (
            isinstance(layer, LocalWindow) and layer.window_size == 1):
        output = _call(layer, x, padding, kwargs)
        return output, None
    return _call(layer, x, padding, dict(kwargs, return_attention_scores=True))


def padding_arguments(layer, padding):
    """The padding mask as `layer` takes it."""
    if isinstance(layer, MultiHead):
        return dict(query_mask=padding, value_mask=padding)
    return dict(mask=padding)


def _call(layer, x, padding, kwargs):
    flags = {name: value for name, value in kwargs.items() if name != "attention_mask"}

    def call(x, padding, explicit):
        return layer(x, attention_mask=explicit, **padding_arguments(layer, padding), **flags)

    return run_as_a_step(call, x, padding, kwargs["attention_mask"])


@st.composite
def scenario(draw):
    batch = draw(st.integers(1, 3))
    length = draw(st.integers(1, 13))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    padding = rng.random((batch, length)) < draw(st.floats(0.0, 1.0))
    explicit = None
    if draw(st.booleans()):
        explicit = rng.random((batch, length, length)) < draw(st.floats(0.0, 1.0))
    return dict(
        name=draw(st.sampled_from(sorted(LAYERS))),
        x=rng.normal(size=(batch, length, 4)).astype("float32") * draw(st.sampled_from([0.1, 1.0, 30.0])),
        noise=rng.normal(size=(batch, length, 4)).astype("float32") * 100,
        padding=padding,
        explicit=explicit,
        causal=draw(st.booleans()),
    )


def allowed_keys(s):
    """Which (b, i, j) may attend, from the masks alone, with the layer's band."""
    batch, length = s["padding"].shape
    allowed = s["padding"][:, :, None] & s["padding"][:, None, :]
    if s["explicit"] is not None:
        allowed = allowed & s["explicit"]
    i, j = np.indices((length, length))
    if s["causal"]:
        allowed = allowed & (j <= i)[None]
    window = {"local_window": 3, "local_window_blocked": 1}.get(s["name"])
    if window is not None:
        allowed = allowed & (abs(i - j) < window)[None]
    return allowed


# Random cases per property: on a second backend (`make test` runs this file
# on JAX too) fewer, since the masking logic it checks is the same code and
# each new shape there compiles anew.
EXAMPLES = 40 if BACKEND == "tensorflow" else 12
SETTINGS = settings(max_examples=EXAMPLES, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(scenario())
def test_masked_keys_never_change_unmasked_outputs(s):
    layer = layer_named(s["name"], 4)
    allowed = allowed_keys(s)
    # Positions no query may see: masked by padding for everyone.
    hidden = ~s["padding"]
    perturbed = np.where(hidden[..., None], s["noise"], s["x"])
    out, weights = attend(layer, s["x"], s["padding"], s["explicit"], s["causal"])
    out2, _ = attend(layer, perturbed, s["padding"], s["explicit"], s["causal"])
    visible = s["padding"]
    np.testing.assert_allclose(np.asarray(out)[visible], np.asarray(out2)[visible], rtol=1e-4, atol=1e-4)
    # Rows with no allowed key give exactly zero output (every bias starts
    # at zero).
    empty_rows = ~allowed.any(-1)
    assert np.all(np.asarray(out)[empty_rows] == 0)
    if weights is None:
        return
    # Weights are exactly zero wherever the masks forbid.
    w = np.asarray(weights)
    assert np.all(w[np.broadcast_to(~allowed[:, None], w.shape)] == 0)


@SETTINGS
@given(scenario())
def test_rows_sum_to_one_or_zero_and_outputs_are_finite(s):
    layer = layer_named(s["name"], 4)
    out, weights = attend(layer, s["x"], s["padding"], s["explicit"], s["causal"])
    assert np.all(np.isfinite(np.asarray(out)))
    if weights is None:
        return
    w = np.asarray(weights)
    sums = w.sum(-1)
    has_key = allowed_keys(s).any(-1)[:, None]
    np.testing.assert_allclose(sums, np.where(np.broadcast_to(has_key, sums.shape), 1.0, 0.0), atol=1e-5)


@settings(max_examples=EXAMPLES * 3 // 8, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(scenario())
def test_gradients_are_finite_even_with_fully_masked_rows(s):
    layer = layer_named(s["name"], 4)

    def loss(x):
        out, _ = attend(layer, x, s["padding"], s["explicit"], s["causal"])
        return ops.sum(out ** 2)

    for g in gradients(loss, [s["x"]], layer.trainable_weights):
        assert np.all(np.isfinite(g))


ROWS_LAYERS = {
    **LAYERS,
    "local_window_global": lambda: LocalWindow(2, 3, window_size=2, global_tokens=1),
}


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario(), st.sampled_from(sorted(ROWS_LAYERS)), st.data())
def test_attention_rows_equal_the_rows_of_the_whole_weights(s, name, data):
    """What a long sequence's figure reads a few rows at a time."""
    layer = ROWS_LAYERS[name]()
    layer.build((None, None, 4))
    length = s["x"].shape[1]
    start = data.draw(st.integers(0, length - 1))
    stop = data.draw(st.integers(start + 1, length))
    causal = s["causal"]

    def whole_and_rows(x, padding, explicit):
        _, whole = layer(x, return_attention_scores=True, attention_mask=explicit,
                         use_causal_mask=causal, **padding_arguments(layer, padding))
        return whole, layer.attention_rows(x, start, stop, mask=padding,
                                           attention_mask=explicit, use_causal_mask=causal)

    whole, rows = run_as_a_step(whole_and_rows, s["x"], s["padding"], s["explicit"])
    assert tuple(rows.shape) == (s["x"].shape[0], whole.shape[1], stop - start, length)
    np.testing.assert_allclose(np.asarray(rows), np.asarray(whole)[:, :, start:stop],
                               rtol=1e-5, atol=1e-6)


def test_attention_rows_refuse_rows_outside_the_sequence():
    import pytest

    layer = LocalWindow(2, 3, window_size=2)
    x = np.zeros((1, 5, 4), "float32")
    for start, stop in ((3, 3), (-1, 2), (0, 6)):
        with pytest.raises(ValueError, match=f"start={start}, stop={stop}|start=-1"):
            layer.attention_rows(x, start, stop)
