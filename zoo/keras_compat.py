"""Every place the zoo leans on private Keras, keras-hub or TensorFlow code.

Written against Keras 3.15.1, keras-hub 0.32.0 and TensorFlow 2.21.0 (the
pins in setup.cfg). Each entry below says what it relies on and why, with the
upstream issue where there is one. Private names are looked up through
`private`, which fails with one message naming the entry when an upgrade has
removed them, and `tests/test_keras_compat.py` checks every entry's private
code is still there and still behaves as the entry needs, so an upgrade
fails in that test, not with a wrong result elsewhere.

Everything else in the zoo imports these helpers from here. TensorFlow is
imported where it is used, so that importing this module (as the presets
module does for the command line's `--help`) stays instant.
"""

WRITTEN_AGAINST = {"keras": "3.15.1", "keras_hub": "0.32.0", "tensorflow": "2.21.0"}


class PrivateCodeChanged(RuntimeError):
    """A private name an entry of this module relies on is gone."""


def private(owner, name, entry):
    """`getattr(owner, name)`, or a `PrivateCodeChanged` naming `entry`."""
    try:
        return getattr(owner, name)
    except AttributeError:
        raise PrivateCodeChanged(
            f"zoo.keras_compat.{entry} relies on the private "
            f"{getattr(owner, '__name__', type(owner).__name__)}"
            f".{name}, which the installed version no longer has (written against "
            f"{WRITTEN_AGAINST}); re-check that entry against the new version.") from None


# 1. Attributes Keras must not track.
#
# Keras's `Layer.__setattr__` tracks every attribute (wrapping lists and
# dicts) and refuses to add state to a built layer. Tokenizers and
# vocabularies hold no weights and are replaced when a vocabulary is learned
# after the network is built; the tf.function caches of eager tokenization
# are plain dicts. `object.__setattr__` sets them past the tracker (the
# export modules track tokenizers explicitly). The export modules (`tf.Module`)
# hold their Keras model the same way, past TensorFlow's tracker, and track its
# variables themselves: saving walks every tracked Keras model and traces its
# default serving signature, the whole network once more per model (an image
# classifier's export took 9.8 s instead of 8.0).

def set_untracked(obj, **attributes):
    """Sets `attributes` on a Keras layer or model, or on a `tf.Module`,
    without Keras or TensorFlow tracking them."""
    for name, value in attributes.items():
        object.__setattr__(obj, name, value)


# 2. Multi-worker training (keras-team/keras#20585).
#
# Keras 3.15's `fit` and `evaluate` under `MultiWorkerMirroredStrategy`
# fail in two private steps: building the model on the first distributed
# batch (averaged over replicas, which collectives cannot do with a tuple)
# and reducing scalar step outputs with `strategy.reduce(..., axis=0)`.
# The model is built from the data's element spec instead, which also spares
# every `fit` and `evaluate` under any strategy an iterator and a batch.
# `RawInputModel` overrides `_maybe_symbolic_build` and its step methods
# with the helpers below (tests/test_zoo_scale.py trains two worker
# processes through the command line).

def in_multi_worker_mode(strategy):
    """Whether `strategy` is a `MultiWorkerMirroredStrategy` spanning
    several workers (one worker runs it like `MirroredStrategy`); TF's
    public API does not say."""
    import tensorflow as tf

    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return False
    return private(strategy.extended, "_in_multi_worker_mode", "in_multi_worker_mode")()


def build_from_element_spec(keras_build, iterator, data_batch):
    """What a model's `_maybe_symbolic_build(iterator, data_batch)` does, with
    the data's element spec standing in for its first batch: building needs
    only shapes and dtypes.

    Under a strategy, Keras's own step creates an iterator at every `fit`
    and `evaluate` (each validation pass included), takes a whole batch
    from it and averages the batch over the replicas, even for a model
    already built. In multi-worker mode the average fails (collectives
    cannot reduce a tuple); elsewhere it costs an iterator and a batch.

    `keras_build` is Keras's own `_maybe_symbolic_build`, bound to the model.
    """
    import tensorflow as tf

    if iterator is not None and data_batch is None:
        spec = iterator.data_adapter.get_tf_dataset().element_spec
        if all(isinstance(part, tf.TensorSpec) for part in tf.nest.flatten(spec)):
            return keras_build(iterator=None, data_batch=spec)
    return keras_build(iterator=iterator, data_batch=data_batch)


def reducible_across_workers(logs):
    """A step's logs as Keras can reduce them across workers: scalars as
    vectors of one, which `strategy.reduce("MEAN", value, axis=0)` averages."""
    import tensorflow as tf

    if not in_multi_worker_mode(tf.distribute.get_strategy()):
        return logs
    return {name: tf.reshape(value, [1]) for name, value in logs.items()}


# 3. XLA by default where it wins.
#
# Keras's `jit_compile="auto"` means no XLA on a machine without an
# accelerator; a model that trains faster with XLA on the CPU overrides the
# private `Model._resolve_auto_jit_compile` (asked both in `compile` and
# when an uncompiled model predicts) with this rule. No upstream issue:
# Keras chose the CPU default deliberately.

def xla_wherever_keras_allows(model):
    """XLA with one replica and every layer compilable (Keras's own
    `model_supports_jit`, which also refuses under op determinism)."""
    import tensorflow as tf
    from keras.src.trainers import trainer

    model_supports_jit = private(trainer, "model_supports_jit", "xla_wherever_keras_allows")
    return tf.distribute.get_strategy().num_replicas_in_sync == 1 and model_supports_jit(model)


# 4. keras-hub tokenizers on the TensorFlow path everywhere.
#
# keras-hub 0.32 tokenizers called eagerly run a pure-Python implementation
# (its "Python workflow", keras-team/keras-hub#2628, #2948; byte-pair through
# Hugging Face's `tokenizers`), while tf.data and the exported SavedModel run
# the TensorFlow ops. The zoo tokenizes with the same ops everywhere, so that
# what a user checks eagerly is what is served: the private
# `_allow_python_workflow=False` keeps the TensorFlow path. (Eager outputs are
# still converted to lists; `RawInputModel.in_graph` runs eager tokenization
# inside a `tf.function` to get tensors.)

def graph_tokenizer(tokenizer_class, **arguments):
    """`tokenizer_class(**arguments)` that runs TensorFlow ops when called
    eagerly too."""
    return tokenizer_class(**arguments, _allow_python_workflow=False)


# 5. keras-hub's preset file access.
#
# Reading one file of a checkpoint handle (a local folder, `hf://` or
# `kaggle://`) the way keras-hub's own loaders do; keras-hub exports no
# public function for it.

def preset_file_exists(handle, name):
    """Whether the checkpoint `handle` holds the file `name`."""
    from keras_hub.src.utils import preset_utils

    return private(preset_utils, "check_file_exists", "preset_file_exists")(str(handle), name)


def preset_file(handle, name):
    """The local path of `name` in the checkpoint `handle` (downloaded if
    the handle is on a hub)."""
    from keras_hub.src.utils import preset_utils

    return private(preset_utils, "get_file", "preset_file")(str(handle), name)


# The zoo's TransformerEncoderBlock sublayer -> keras-hub's
# `TransformerEncoder` attribute holding the same weights (entry 7).
HUB_ENCODER_SUBLAYERS = {
    "attention_layer": "_self_attention_layer",
    "attention_norm": "_self_attention_layer_norm",
    "intermediate_dense": "_feedforward_intermediate_dense",
    "output_dense": "_feedforward_output_dense",
    "feed_forward_norm": "_feedforward_layer_norm",
}


def safetensor_loader(handle):
    """keras-hub's reader of a Hugging Face checkpoint's safetensors files."""
    from keras_hub.src.utils.transformers import safetensor_utils

    return private(safetensor_utils, "SafetensorLoader", "safetensor_loader")(handle)


# 6. `fit`'s validation pass.
#
# Keras 3.15's `fit` validates at each epoch's end by calling the model's
# own `evaluate` with the private keyword `_use_cached_eval_dataset=True`;
# `evaluate` then reads the iterator `fit` built from `validation_data` and
# ignores `x`. An `evaluate` that builds a pipeline from raw inputs
# (`RawInputModel.evaluate`) must hand such a call straight on.

def evaluates_fits_validation_data(evaluate_kwargs):
    """Whether `evaluate(**evaluate_kwargs)` is `fit`'s validation pass."""
    return bool(evaluate_kwargs.get("_use_cached_eval_dataset", False))


# 7. keras-hub's encoder block sublayers.
#
# keras-hub 0.32's `TransformerEncoder` (the blocks of `BertBackbone`,
# `DistilBertBackbone`, `RobertaBackbone`) keeps its attention, norms and
# feed-forward layers in private attributes and exposes no public accessor;
# converting a checkpoint copies each one's weights into the zoo's block.

def hub_encoder_sublayers(encoder):
    """`{zoo block sublayer name: keras-hub sublayer}` of a keras-hub `TransformerEncoder`."""
    return {ours: private(encoder, theirs, "hub_encoder_sublayers")
            for ours, theirs in HUB_ENCODER_SUBLAYERS.items()}


# 8. One data iterator per pass.
#
# Keras 3.15's `EpochIterator`, given no `steps_per_epoch`, creates an
# iterator over the data at the end of every pass (in its private
# `_enumerate_iterator`), which the next pass discards unused to create its
# own. Creating one instantiates the pipeline's functions and starts its
# prefetching: 30-40 ms for a small text classifier's pipeline, about 150 ms
# with TensorFlow's graph optimizer on, as users run it, and more over several
# devices. One was wasted per epoch, per validation pass, per `evaluate` and
# per `predict` (half of the iterators the test suite created). Keras hands
# `fit`'s and `evaluate`'s epoch iterators to `_maybe_symbolic_build`, where
# `RawInputModel` ends their passes without it; `predict` hands its to no
# method, and `RawInputModel.predict` stops it after its last batch instead
# (`zoo.pipeline.StopAfterLastPrediction`, through the public
# `stop_predicting`). Given `steps_per_epoch`, Keras carries one iterator
# across passes, and nothing changes. The zoo's in-memory passes are ordered
# by their epoch, not by the iterator; a user's `tf.data` pipeline that
# reshuffles each pass now gets its shuffles in turn, one per epoch, where
# Keras skipped every other one for the unused iterator. No upstream issue
# filed yet.

def one_iterator_per_pass(epoch_iterator):
    """Makes Keras's `epoch_iterator` (of `fit` or `evaluate`) end each pass
    without creating the iterator that the next pass would discard."""
    if epoch_iterator is None or epoch_iterator.steps_per_epoch is not None:
        return
    if "_enumerate_iterator" in vars(epoch_iterator):
        return  # `fit`'s validation iterator, which every epoch's `evaluate` reuses
    keras_pass = private(epoch_iterator, "_enumerate_iterator", "one_iterator_per_pass")

    def finished():
        batches = private(epoch_iterator, "_num_batches", "one_iterator_per_pass")
        return bool(batches) and private(
            epoch_iterator, "_steps_seen", "one_iterator_per_pass") >= batches

    def one_pass():
        steps = keras_pass()
        for step in steps:
            yield step
            if finished():
                # Where Keras would create the next pass's iterator, then end the pass.
                steps.close()
                epoch_iterator.data_adapter.on_epoch_end()
                return

    epoch_iterator._enumerate_iterator = one_pass
