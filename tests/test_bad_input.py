"""Bad input gets a ValueError/TypeError naming what was received."""

import keras
import numpy as np
import pytest

import keras_selfattn as ksa


@pytest.mark.parametrize("bad", [0, -2, 2.5, True, "4", None])
@pytest.mark.parametrize("factory,argument", [
    (lambda v: ksa.MultiHead(num_heads=v, key_dim=4), "num_heads"),
    (lambda v: ksa.MultiHead(num_heads=2, key_dim=v), "key_dim"),
    (lambda v: ksa.LocalWindow(2, 4, window_size=v), "window_size"),
    (lambda v: ksa.LocalWindow(num_heads=v, key_dim=4, window_size=2), "num_heads"),
    (lambda v: ksa.Additive(num_heads=v), "num_heads"),
])
def test_positive_int_arguments(factory, argument, bad):
    with pytest.raises(ValueError, match=f"{argument}.*Received: {argument}="):
        factory(bad)


@pytest.mark.parametrize("kwargs,match", [
    (dict(units=0), "units"),
    (dict(units=6, num_heads=4), "divisible"),
    (dict(window_size=-1), "window_size"),
    (dict(dropout=1.5), "dropout"),
])
def test_additive_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ksa.Additive(**kwargs)


def test_multi_head_arguments():
    with pytest.raises(ValueError, match="num_key_value_heads"):
        ksa.MultiHead(4, 2, num_key_value_heads=3)
    with pytest.raises(ValueError, match="output_shape"):
        ksa.MultiHead(2, 2, output_shape="wide")
    with pytest.raises(ValueError, match="attention_axes"):
        ksa.MultiHead(2, 2, attention_axes="time")
    with pytest.raises(ValueError, match="attention_axes"):
        ksa.MultiHead(2, 2, attention_axes=(3,))(np.zeros((1, 4, 4), "float32"))
    with pytest.raises(ValueError, match="Dropout is not supported"):
        ksa.MultiHead(2, 2, dropout=0.1, flash_attention=True)
    with pytest.raises(ValueError, match="encoder|attention"):
        ksa.TransformerEncoderBlock(2, 8, attention="flash")
    with pytest.raises(ValueError, match="window_size"):
        ksa.TransformerEncoderBlock(2, 8, attention="local_window")


LAYERS = [
    lambda: ksa.SelfAttention(),
    lambda: ksa.MultiHead(2, 4),
    lambda: ksa.LocalWindow(2, 4, window_size=2),
    lambda: ksa.Additive(),
]
IDS = ["self_attention", "multi_head", "local_window", "additive"]


@pytest.mark.parametrize("factory", LAYERS, ids=IDS)
def test_wrong_rank(factory):
    with pytest.raises(ValueError, match=r"rank.*Received: .*shape=\(2, 8\)"):
        factory()(np.zeros((2, 8), "float32"))


@pytest.mark.parametrize("factory", LAYERS, ids=IDS)
def test_unknown_last_dimension(factory):
    with pytest.raises(ValueError, match="last dimension.*must be known"):
        factory()(keras.Input((5, None)))


@pytest.mark.parametrize("factory", LAYERS, ids=IDS)
def test_width_differs_from_build(factory):
    layer = factory()
    layer(np.zeros((1, 3, 8), "float32"))
    with pytest.raises(ValueError, match=r"must equal 8.*Received: .*\(1, 3, 6\)"):
        layer(np.zeros((1, 3, 6), "float32"))


@pytest.mark.parametrize("factory", LAYERS, ids=IDS)
def test_integer_inputs(factory):
    with pytest.raises(TypeError, match="floating-point.*int32"):
        factory()(np.zeros((1, 3, 8), "int32"))


@pytest.mark.parametrize("factory", LAYERS, ids=IDS)
def test_empty_sequence(factory):
    with pytest.raises(ValueError, match="empty dimension"):
        factory()(np.zeros((1, 0, 8), "float32"))


@pytest.mark.parametrize("factory", LAYERS, ids=IDS)
@pytest.mark.parametrize("shape", [(2, 5, 4), (3, 5, 5), (5,), (1, 1, 1, 1, 1)])
def test_attention_mask_that_cannot_broadcast(factory, shape):
    layer = factory()
    x = np.zeros((2, 5, 8), "float32")
    call = (lambda m: layer(x, attention_mask=m))
    with pytest.raises(ValueError, match=r"attention_mask.*Received: attention_mask.shape="):
        call(np.ones(shape, bool))


def test_mismatched_query_and_key_lengths_in_cross_attention():
    layer = ksa.MultiHead(2, 4)
    with pytest.raises(ValueError, match="value.*key.*must be equal"):
        layer(np.zeros((1, 3, 8), "float32"), np.zeros((1, 5, 8), "float32"), np.zeros((1, 4, 8), "float32"))


def test_building_block_errors():
    with pytest.raises(ValueError, match="divisible by patch_size=4"):
        ksa.PatchEmbedding(4, 8)(np.zeros((1, 10, 8, 3), "float32"))
    with pytest.raises(ValueError, match="more than sequence_length=4"):
        ksa.PositionEmbedding(4)(np.zeros((1, 6, 8), "float32"))
    with pytest.raises(TypeError, match="integer token ids"):
        ksa.TokenAndPositionEmbedding(10, 4, 8)(np.zeros((1, 3), "float32"))
    with pytest.raises(ValueError, match="token ids shaped"):
        ksa.TokenAndPositionEmbedding(10, 4, 8)(np.zeros((1, 3, 2), "int32"))
