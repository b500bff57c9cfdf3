"""zoo.keras_compat: every entry's private Keras, keras-hub or TensorFlow code
is still there and still does what the entry needs. An upgrade that changes
one fails here, with a message naming the entry, rather than with a wrong
result somewhere in the zoo."""

import importlib

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf

from zoo import keras_compat


def test_the_installed_versions_are_those_the_entries_were_checked_against():
    installed = {name: importlib.import_module(name).__version__
                 for name in keras_compat.WRITTEN_AGAINST}
    assert installed == keras_compat.WRITTEN_AGAINST, (
        "An upgrade: re-check each entry of zoo/keras_compat.py against the new versions (this "
        "file's other tests check what each relies on), then update WRITTEN_AGAINST.")


def test_a_missing_private_name_fails_naming_the_entry():
    with pytest.raises(keras_compat.PrivateCodeChanged, match="keras_compat.some_entry relies on "
                       r"the private Model._gone"):
        keras_compat.private(keras.Model, "_gone", "some_entry")


def test_set_untracked_keeps_what_keras_tracking_would_wrap():
    model = keras.Sequential([keras.layers.Dense(2)])
    model.build((None, 3))
    cache = {}
    model.tracked = {}
    assert type(model.tracked) is not dict, (
        "Keras no longer wraps dict attributes: set_untracked may no longer be needed")
    keras_compat.set_untracked(model, cache=cache)
    assert model.cache is cache
    assert len(model.weights) == 2


def test_the_multi_worker_entries_find_the_private_code_they_use():
    from tensorflow.python.distribute.collective_all_reduce_strategy import (
        CollectiveAllReduceExtended,
    )

    assert callable(keras_compat.private(CollectiveAllReduceExtended, "_in_multi_worker_mode",
                                         "in_multi_worker_mode"))
    assert not keras_compat.in_multi_worker_mode(tf.distribute.get_strategy())
    assert list(keras_compat.private(keras.Model, "_maybe_symbolic_build",
                                     "build_from_element_spec").__code__.co_varnames[1:3]) == [
        "iterator", "data_batch"]
    logs = {"loss": tf.constant(1.5)}
    assert keras_compat.reducible_across_workers(logs) is logs

    # Keras builds symbolically only under a strategy (the zoo's models
    # always have one).
    with tf.distribute.OneDeviceStrategy("/cpu:0").scope():
        model = keras.Sequential([keras.layers.Dense(2)])
        model.compile(loss="mse")
    keras_compat.build_from_element_spec(model._maybe_symbolic_build, None,
                                         (np.ones((4, 3), "float32"), np.ones((4, 2), "float32")))
    assert model.built and len(model.weights) == 2


def test_keras_still_asks_the_auto_xla_hook_in_compile():
    class AlwaysXla(keras.Sequential):
        def _resolve_auto_jit_compile(self):
            return True

    model = AlwaysXla([keras.layers.Dense(2)])
    model.compile(loss="mse", jit_compile="auto")
    assert model.jit_compile is True, "Keras no longer asks Model._resolve_auto_jit_compile"
    plain = keras.Sequential([keras.layers.Dense(2)])
    plain.build((None, 3))
    assert keras_compat.xla_wherever_keras_allows(plain) is True


def test_fits_validation_pass_is_told_from_a_users_evaluate():
    calls = []

    class Recording(keras.Sequential):
        def evaluate(self, x=None, y=None, **kwargs):
            calls.append(keras_compat.evaluates_fits_validation_data(kwargs))
            return super().evaluate(x, y, **kwargs)

    model = Recording([keras.layers.Dense(1)])
    model.compile(loss="mse")
    data = (np.ones((8, 3), "float32"), np.ones((8, 1), "float32"))
    model.fit(*data, validation_data=data, epochs=2, verbose=0)
    model.evaluate(*data, verbose=0)
    assert calls == [True, True, False], (
        "Keras's fit no longer validates through evaluate(_use_cached_eval_dataset=True)")


@pytest.mark.parametrize("tokenizer_class, arguments", [
    (keras_hub.tokenizers.WordPieceTokenizer, dict(vocabulary=["[PAD]", "[UNK]", "a", "b"])),
    (keras_hub.tokenizers.BytePairTokenizer, dict(vocabulary={"a": 0, "b": 1, "ab": 2},
                                                  merges=["a b"])),
])
def test_graph_tokenizers_take_the_tensorflow_path_in_eager_code(tokenizer_class, arguments):
    tokenizer = keras_compat.graph_tokenizer(tokenizer_class, **arguments, dtype="int32")
    uses_tf = keras_compat.private(tokenizer, "_use_tf_workflow", "graph_tokenizer")
    assert uses_tf(), "keras-hub ignores `_allow_python_workflow=False` now"
    default = tokenizer_class(**arguments, dtype="int32")
    assert not default._use_tf_workflow(), (
        "keras-hub's tokenizers take the TensorFlow path eagerly by default again: "
        "graph_tokenizer's private flag may no longer be needed")
    # The same ids as inside a tf.function, which always takes that path.
    eager = tokenizer(["a b"])
    traced = tf.function(lambda texts: tokenizer(texts))(tf.constant(["a b"]))
    assert list(eager[0]) == traced[0].numpy().tolist()


def test_preset_file_access_reads_a_local_checkpoint_folder(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert keras_compat.preset_file_exists(tmp_path, "config.json")
    assert not keras_compat.preset_file_exists(tmp_path, "tokenizer.json")
    assert keras_compat.preset_file(tmp_path, "config.json") == str(tmp_path / "config.json")
    from keras_hub.src.utils.transformers import safetensor_utils

    assert keras_compat.private(safetensor_utils, "SafetensorLoader", "safetensor_loader")


def test_keras_hub_encoder_blocks_keep_the_sublayers_conversion_copies():
    import keras_hub

    encoder = keras_hub.layers.TransformerEncoder(intermediate_dim=8, num_heads=2)
    encoder.build((1, 4, 6))
    sublayers = keras_compat.hub_encoder_sublayers(encoder)
    assert sorted(sublayers) == sorted(keras_compat.HUB_ENCODER_SUBLAYERS)
    # Each holds weights, shaped as the zoo's block needs them.
    assert [w.shape for w in sublayers["intermediate_dense"].weights] == [(6, 8), (8,)]
    assert [w.shape for w in sublayers["output_dense"].weights] == [(8, 6), (6,)]
    assert len(sublayers["attention_layer"].weights) == 8
    for norm in ("attention_norm", "feed_forward_norm"):
        assert [w.shape for w in sublayers[norm].weights] == [(6,), (6,)]


def test_each_pass_creates_one_iterator_and_sees_every_batch_in_order(monkeypatch):
    """Entries 2 (building from the element spec) and 8 together."""
    from zoo.pipeline import StopAfterLastPrediction

    class OneIteratorPerPass(keras.Sequential):
        def _maybe_symbolic_build(self, iterator=None, data_batch=None):
            keras_compat.one_iterator_per_pass(iterator)
            return keras_compat.build_from_element_spec(
                super()._maybe_symbolic_build, iterator, data_batch)

    class Batches(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seen = []

        def on_train_batch_end(self, batch, logs=None):
            self.seen.append(("train", batch))

        def on_test_batch_end(self, batch, logs=None):
            self.seen.append(("test", batch))

        def on_predict_batch_end(self, batch, logs=None):
            self.seen.append(("predict", batch))

    created = []
    keras_iter = tf.data.Dataset.__iter__
    monkeypatch.setattr(tf.data.Dataset, "__iter__",
                        lambda self: created.append(1) or keras_iter(self))
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 3)).astype("float32"), rng.normal(size=(40, 1)).astype("float32")
    # One order for every pass, as the zoo's in-memory passes have one per
    # epoch (a pipeline that reshuffles each pass gets its shuffles in turn,
    # with none skipped for an iterator that was never read).
    data = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(
        40, seed=1, reshuffle_each_iteration=False).batch(8)
    validation = tf.data.Dataset.from_tensor_slices((x[:16], y[:16])).batch(8)
    weights = {}
    for model_class in (keras.Sequential, OneIteratorPerPass):
        keras.utils.set_random_seed(0)
        # Under a strategy, as the zoo's runs: Keras takes a batch at every
        # `fit` and `evaluate` to build the model, even once it is built.
        with tf.distribute.OneDeviceStrategy("/cpu:0").scope():
            model = model_class([keras.layers.Dense(1)])
            model.compile(optimizer="sgd", loss="mse")
        batches = Batches()
        del created[:]
        model.fit(data, validation_data=validation, epochs=3, callbacks=[batches], shuffle=False,
                  verbose=0)
        model.evaluate(validation, callbacks=[batches], verbose=0)
        predictions = model.predict(validation, callbacks=[batches, StopAfterLastPrediction()],
                                    verbose=0)
        weights[model_class] = [w.numpy() for w in model.weights]
        assert predictions.shape == (16, 1)
        assert batches.seen == ([*[("train", b) for b in range(5)], ("test", 0), ("test", 1)] * 3
                                + [("test", 0), ("test", 1), ("predict", 0), ("predict", 1)])
    # Keras: a second iterator per pass (3 epochs, 3 validation passes,
    # `evaluate`, `predict`) and one to build from at each `fit` and
    # `evaluate`; with the entries, one per pass.
    assert len(created) == 3 + 3 + 1 + 1, (
        "Keras's epoch iterator no longer ends its passes as one_iterator_per_pass expects, "
        "or builds the model otherwise than build_from_element_spec expects")
    for plain, one in zip(weights[keras.Sequential], weights[OneIteratorPerPass]):
        np.testing.assert_array_equal(plain, one)
