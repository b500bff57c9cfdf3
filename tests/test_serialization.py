"""`.keras` and SavedModel round trips, each loaded in a fresh process."""

import json

import keras
import numpy as np
import pytest

import keras_selfattn as ksa
from backend import BACKEND, tensorflow_only
from conftest import graph_optimizer_on, run_python, serve_in_clean_process

# Where a `.keras` file written here is loaded back: this process's backend
# and every other one installed (TensorFlow always; JAX with the `jax` extra).
LOADING_BACKENDS = ["tensorflow"] + [
    name for name, module in (("jax", "jax"), ("torch", "torch"))
    if __import__("importlib.util").util.find_spec(module) is not None]

VOCAB, LENGTH, WIDTH = 50, 12, 16


def text_model(attention_layer, causal=False):
    ids = keras.Input((LENGTH,), dtype="int32", name="ids")
    x = ksa.TokenAndPositionEmbedding(VOCAB, LENGTH, WIDTH, mask_zero=True)(ids)
    x = attention_layer(x, use_causal_mask=causal)
    x = keras.layers.GlobalAveragePooling1D()(x)
    return keras.Model(ids, keras.layers.Dense(3)(x))


def block_model():
    ids = keras.Input((LENGTH,), dtype="int32", name="ids")
    x = keras.layers.Embedding(VOCAB, WIDTH, mask_zero=True)(ids)
    x = x + ksa.SinePositionEncoding()(x)
    encoded = ksa.TransformerEncoderBlock(2, 32, attention="additive")(x)
    encoded = ksa.TransformerEncoderBlock(2, 32, attention="local_window", window_size=3, normalize_first=True)(encoded)
    decoded = ksa.TransformerDecoderBlock(2, 32)(x, encoded)
    decoded = decoded + ksa.PositionEmbedding(LENGTH)(decoded)
    return keras.Model(ids, keras.layers.GlobalAveragePooling1D()(decoded))


def image_model():
    images = keras.Input((16, 16, 3), name="images")
    x = ksa.PatchEmbedding(4, WIDTH)(images)
    x = ksa.TransformerEncoderBlock(2, 32, attention="self_attention")(x)
    return keras.Model(images, keras.layers.Dense(3)(x[:, 0]))


def all_models():
    return {
        "self_attention": text_model(ksa.SelfAttention(), causal=True),
        "multi_head": text_model(ksa.MultiHead(4, 4, num_key_value_heads=2, dropout=0.1)),
        "local_window": text_model(ksa.LocalWindow(2, 8, window_size=4)),
        "additive": text_model(ksa.Additive(num_heads=2, window_size=5)),
        "blocks": block_model(),
        "image": image_model(),
    }


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("roundtrip")
    rng = np.random.default_rng(0)
    ids = rng.integers(1, VOCAB, size=(4, LENGTH)).astype("int32")
    ids[1, 7:] = 0
    ids[3, 1:] = 0
    images = rng.random((4, 16, 16, 3)).astype("float32")
    names = []
    for name, model in all_models().items():
        inputs = images if name == "image" else ids
        np.save(folder / f"{name}_inputs.npy", inputs)
        with graph_optimizer_on():  # as the fresh process that compares bit for bit runs
            np.save(folder / f"{name}_expected.npy", model.predict(inputs, verbose=0))
        model.save(folder / f"{name}.keras")
        if BACKEND == "tensorflow":
            model.export(str(folder / f"{name}_savedmodel"), verbose=False)
        names.append(name)
    (folder / "names.json").write_text(json.dumps(names))
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("loading_backend", LOADING_BACKENDS)
def test_keras_file_loads_in_fresh_process_with_only_keras_and_package(saved, loading_backend):
    """Identical predictions on the backend that saved it; on another
    backend (saved on TensorFlow, loaded on JAX, and back) equal to float32
    rounding."""
    out = run_python(
        f"""
        import json, sys
        import numpy as np
        import keras
        import keras_selfattn  # registers the layers; no custom_objects
        assert keras.backend.backend() == {loading_backend!r}
        for name in json.load(open("names.json")):
            model = keras.saving.load_model(f"{{name}}.keras")
            got = np.asarray(model.predict(np.load(f"{{name}}_inputs.npy"), verbose=0))
            expected = np.load(f"{{name}}_expected.npy")
            if {loading_backend == BACKEND!r}:
                np.testing.assert_array_equal(got, expected)
            else:
                np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
            print("identical", name)
        assert "keras_hub" not in sys.modules
        """,
        cwd=saved, backend=loading_backend,
    )
    assert out.count("identical") == 6


@pytest.mark.slow
@tensorflow_only
def test_saved_model_answers_in_fresh_process_with_only_tensorflow(saved):
    out = serve_in_clean_process(
        """
        import json, sys
        import numpy as np
        import tensorflow as tf
        for name in json.load(open("names.json")):
            loaded = tf.saved_model.load(f"{name}_savedmodel")
            signature = loaded.signatures["serving_default"]
            inputs = np.load(f"{name}_inputs.npy")
            (arg,) = signature.structured_input_signature[1]
            (result,) = signature(**{arg: tf.constant(inputs)}).values()
            np.testing.assert_allclose(result.numpy(), np.load(f"{name}_expected.npy"), atol=1e-5)
            print("answered", name)
        assert "keras_selfattn" not in sys.modules
        assert "keras_hub" not in sys.modules
        """,
        cwd=saved,
    )
    assert out.count("answered") == 6


@pytest.mark.parametrize(
    "layer",
    [ksa.SelfAttention(units=5, use_scale=False, dropout=0.2, seed=3),
     ksa.MultiHead(3, 4, value_dim=2, output_shape=7, sliding_window=4, use_gate=True,
                   flash_attention=False, num_key_value_heads=1, kernel_regularizer="l2"),
     ksa.LocalWindow(2, 4, window_size=6, value_dim=3, num_key_value_heads=1, use_bias=False),
     ksa.Additive(units=6, num_heads=3, window_size=2, query_chunk_size=4, bias_constraint="non_neg"),
     ksa.TransformerEncoderBlock(2, 8, attention="local_window", window_size=2, activation="relu"),
     ksa.TransformerDecoderBlock(2, 8, key_dim=3, normalize_first=True),
     ksa.TokenAndPositionEmbedding(10, 5, 4, mask_zero=True),
     ksa.PositionEmbedding(9), ksa.SinePositionEncoding(500), ksa.PatchEmbedding(2, 4, use_class_token=False)],
    ids=lambda layer: type(layer).__name__,
)
def test_get_config_round_trips_every_argument(layer):
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    signature_args = set(__import__("inspect").signature(type(layer).__init__).parameters) - {"self", "kwargs"}
    missing = signature_args - set(config)
    assert not missing, missing
