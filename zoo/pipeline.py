"""Models that `fit`, `evaluate` and `predict` on raw inputs (strings, images).

Preprocessing (tokenizing, decoding) runs in the `tf.data` pipeline, as in
keras-hub's tasks, so the Keras model itself works on tensors (token ids,
pixels) and trains fast; the same preprocessing functions are traced into the
exported SavedModel, so serving sees exactly what training saw.
"""

import collections
import hashlib

import keras
import numpy as np
import tensorflow as tf

from zoo.keras_compat import (
    build_from_element_spec, evaluates_fits_validation_data, one_iterator_per_pass,
    reducible_across_workers, set_untracked,
)

AUTOTUNE = tf.data.AUTOTUNE


def text_array(x):
    """A 1-D list or array of texts (str or UTF-8 bytes) -> NumPy array of str."""
    if isinstance(x, str):
        raise TypeError("Give a list of texts, not a single string. Received: a str.")
    array = np.asarray(x, dtype=object)
    if array.ndim != 1:
        raise ValueError(f"Texts must be a 1-D list or array. Received shape {array.shape}.")
    return np.array(
        [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in array],
        dtype=object,
    ).astype(str)


# The vocabularies this process learned last, by a digest of what they were
# learned from: learning is deterministic and slow (keras-hub's learner is
# Python, about a second for a few hundred reviews), and a search (`tune`),
# a rerun in a notebook or `fit` after `adapt` learns from the same texts again.
_LEARNED_VOCABULARIES = collections.OrderedDict()
_LEARNED_VOCABULARIES_KEPT = 8


def learn_word_piece_vocabulary(texts, size, reserved_tokens, lowercase):
    """A WordPiece vocabulary of at most `size` tokens (keras-hub's learner)
    from the non-blank `texts`, `reserved_tokens` first; accents are kept
    exactly when case is."""
    import keras_hub

    texts = [t for t in texts if t.strip()]
    if not texts:
        raise ValueError("Cannot learn a vocabulary from no (non-empty) text.")
    digest = hashlib.sha256(repr((int(size), list(reserved_tokens), bool(lowercase))).encode())
    for text in texts:
        digest.update(text.encode("utf-8", "surrogatepass") + b"\0")
    key = digest.hexdigest()
    if key not in _LEARNED_VOCABULARIES:
        _LEARNED_VOCABULARIES[key] = keras_hub.tokenizers.compute_word_piece_vocabulary(
            tf.data.Dataset.from_tensor_slices(texts).batch(256),
            vocabulary_size=size, lowercase=lowercase, strip_accents=lowercase,
            reserved_tokens=list(reserved_tokens),
        )
        while len(_LEARNED_VOCABULARIES) > _LEARNED_VOCABULARIES_KEPT:
            _LEARNED_VOCABULARIES.popitem(last=False)
    _LEARNED_VOCABULARIES.move_to_end(key)
    return list(_LEARNED_VOCABULARIES[key])


def length_grouped_batches(data, batch_size, drop_remainder=False, seed=None):
    """Batches of raw examples of similar length, in random order.

    Text models pad each batch to its longest text, so random batches of
    short and long texts cost the long one's length for all. Each run of
    `32 * batch_size` (already shuffled) examples is sorted by the length
    in characters of its string columns (the longest, for pairs) and cut
    into batches, whose order is shuffled again; only the last run leaves a
    partial batch, so an epoch has as many batches as plain batching gives,
    and Keras knows how many.
    """
    run = 32 * batch_size

    def sorted_batches(*columns):
        lengths = [tf.strings.length(column, unit="UTF8_CHAR")
                   for column in columns if column.dtype == tf.string]
        length = lengths[0]
        for other in lengths[1:]:
            length = tf.maximum(length, other)
        order = tf.argsort(length, stable=True)
        columns = tuple(tf.gather(column, order) for column in columns)
        return tf.data.Dataset.from_tensor_slices(
            columns if len(columns) > 1 else columns[0]
        ).batch(batch_size, drop_remainder=drop_remainder)

    # With a seed, every pass over the data gives the same order: `fit`
    # builds each epoch's batches with that epoch's seed, and Keras's first
    # look at a distributed dataset (to build the model) must not shift it.
    batches = data.batch(run).flat_map(sorted_batches).shuffle(
        32, seed=seed, reshuffle_each_iteration=seed is None)
    count = int(data.cardinality())
    if count >= 0:
        batches = batches.apply(tf.data.experimental.assert_cardinality(
            count // batch_size if drop_remainder else -(-count // batch_size)
        ))
    return batches


def valid_utf8(texts):
    """String tensor with invalid UTF-8 replaced by U+FFFD, so that one bad
    input does not fail its whole batch in the tokenizer."""
    return tf.strings.unicode_transcode(
        texts, "UTF-8", "UTF-8", errors="replace", replacement_char=0xFFFD
    )


class RawInputModel(keras.Model):
    """Base of the zoo models: Keras's `fit`, `evaluate` and `predict` on raw
    inputs (texts, images), preprocessed in the `tf.data` pipeline.

    `input_pipeline` turns whatever the user passed into batches of model
    inputs; its docstring has the table of accepted types. A subclass
    implements `preprocess` and `raw_input_spec` and overrides the other
    hooks below where its inputs need it: each hook says what calls it and
    when. Keras's own private methods overridden here are at the end of the
    class, each delegating to `zoo.keras_compat`.
    """

    # Whether `fit` drops the last, partial batch of in-memory training
    # data: under XLA every new batch shape compiles the step again.
    drop_remainder_in_training = False
    # Every batch padded to the full sequence length, partial batches
    # dropped: what a TPU needs (set by `zoo.training_run.TrainingRun.prepare`).
    static_shapes = False

    # Hooks: what a subclass defines.

    #: The `tf.TensorSpec` of one raw input (`TensorSpec((), tf.string)` for
    #: a text). `input_pipeline` compares a dataset's elements with it.
    raw_input_spec = None

    #: Label names, when the labels have names; `label_ids` maps them.
    label_names = None

    #: Whether raw examples are batched by length (`batch_raw`): text
    #: models pad each batch to its longest text, and grouping similar
    #: lengths spares the padding.
    groups_by_length = False

    #: Whether the attention figure and statistics need the targets
    #: (`attention_maps(inputs, targets)`): a decoder's attention does.
    attention_needs_targets = False

    #: Whether an unbatched dataset is preprocessed one example at a time
    #: (`preprocess_example`) before batching: for raw inputs that cannot be
    #: batched as they are (images of different sizes).
    preprocesses_each_example = False

    def preprocess(self, inputs):
        """A batch of raw inputs -> the network's inputs, in TensorFlow ops.

        Called by `input_pipeline` inside `tf.data` for every batch (and by
        the export, traced into the SavedModel): training and serving run
        the same preprocessing.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement `preprocess`.")

    @property
    def raw_dtypes(self):
        """The dtypes raw inputs come in (default: `raw_input_spec`'s).

        Read by `input_pipeline`: a `tf.data.Dataset` of any other dtype is
        taken as already preprocessed and used as it is.
        """
        return (self.raw_input_spec.dtype,)

    def is_batched(self, element_spec):
        """Whether a raw dataset's elements (`element_spec`) are batches.

        Called by `input_pipeline` on a `tf.data.Dataset` of raw inputs: a
        batched one is preprocessed batch by batch, an unbatched one is
        batched first (`batch_raw`).
        """
        return element_spec.shape.rank == self.raw_input_spec.shape.rank + 1

    def raw_examples(self, x, y=None):
        """`fit`/`evaluate`/`predict`'s `x` and `y` -> `(raw inputs, labels)`.

        Called first, on anything that is not a `tf.data.Dataset`. The image
        classifier reads a folder of labelled files here.
        """
        return self.raw_array(x), y

    def raw_array(self, x):
        """In-memory raw inputs -> one NumPy array, checked (texts: `text_array`)."""
        return np.asarray(x)

    def prepare_for_training(self, x, y):
        """Called by `fit` before it builds its dataset, with the raw inputs
        (or the user's `tf.data.Dataset`) and labels: a text model learns
        its vocabulary here, a classifier its label names."""

    def targets(self, y):
        """In-memory labels or targets -> the array the pipeline slices.

        Called by `input_pipeline` on in-memory data (default: label ids,
        by name or number, via `label_ids`; a translator keeps its texts).
        """
        return self.label_ids(y)

    def tf_targets(self, y):
        """`targets` in TensorFlow ops, for a `tf.data.Dataset` of raw
        `(inputs, labels)` pairs; called by `input_pipeline` per element."""
        return self._tf_label_ids(y)

    def preprocess_pair(self, inputs, targets):
        """A batch of raw `(inputs, targets)` -> the network's `(x, y[,
        sample_weight])`, in TensorFlow ops.

        Called by `input_pipeline` for every labelled batch (default:
        `(preprocess(inputs), targets)`; a translator tokenizes its target
        texts into decoder inputs, next tokens and weights).
        """
        return self.preprocess(inputs), targets

    def preprocess_example(self, example):
        """One raw input -> a fixed-shape network input, in TensorFlow ops.

        Called by `input_pipeline` on each element of an unbatched dataset
        when `preprocesses_each_example` (images of different sizes), which
        is then batched.
        """
        raise NotImplementedError(
            f"{type(self).__name__} sets preprocesses_each_example but does not "
            "implement `preprocess_example`.")

    def batch_raw(self, data, batch_size, drop_remainder=False, ordered=False, seed=None):
        """Groups raw examples (before `preprocess`) into batches.

        Called by `input_pipeline` on in-memory data and on unbatched
        datasets. Default: texts of similar length together when
        `groups_by_length`, unless `ordered` (`predict` keeps the inputs'
        order) or the shapes must be static.
        """
        if self.groups_by_length and not ordered and not self.static_shapes:
            return length_grouped_batches(data, batch_size, drop_remainder, seed)
        return data.batch(batch_size, drop_remainder=drop_remainder)

    def augment(self, model_inputs):
        """Random augmentation of a preprocessed batch of training inputs.

        Called by `fit` in the `tf.data` pipeline, on the training data
        only, so that the network stays free of ops XLA cannot compile.
        Default: none.
        """
        return model_inputs

    def default_loss(self):
        """The loss `compile(loss="auto")` uses. Called by `compile`."""
        raise NotImplementedError(f"{type(self).__name__} must implement `default_loss`.")

    #: Whether `compile`'s metrics are weighted by the pipeline's sample
    #: weights (`preprocess_pair`'s third output).
    sample_weighted_metrics = False

    # Labels.

    def label_ids(self, labels):
        """Labels given as ints or as names -> int32 ids, checked."""
        labels = np.asarray(labels)
        names = list(self.label_names or [])
        if labels.dtype.kind in "iu":
            ids = labels.astype("int32")
        elif labels.dtype.kind in "OSU":
            texts = [v.decode() if isinstance(v, bytes) else str(v) for v in labels.ravel()]
            unseen = sorted(set(texts) - set(names))
            if unseen:
                raise ValueError(
                    f"Labels {unseen[:10]} are not among the model's labels "
                    f"{names}. Train on data that contains them, or give the "
                    "model every label name with `labels=`."
                )
            ids = np.array([names.index(t) for t in texts], "int32").reshape(labels.shape)
        else:
            raise TypeError(
                f"Labels must be ints or strings. Received dtype {labels.dtype}."
            )
        bad = ids[(ids < 0) | (ids >= self.num_classes)]
        if bad.size:
            raise ValueError(
                f"Label ids must lie in [0, {self.num_classes}). Received: "
                f"{sorted(set(bad.tolist()))[:10]}"
            )
        return ids

    # Keras entry points on raw data.

    def compile(self, optimizer="auto", loss="auto", metrics="auto", **kwargs):
        """Keras's `compile`, where `"auto"` means the zoo's defaults: AdamW
        (learning rate 1e-3, weight decay 0.01), `default_loss()`, and
        accuracy (weighted when `sample_weighted_metrics`)."""
        if optimizer == "auto":
            optimizer = keras.optimizers.AdamW(1e-3, weight_decay=0.01)
        if loss == "auto":
            loss = self.default_loss()
        if metrics == "auto":
            metrics = [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
        metrics_argument = "weighted_metrics" if self.sample_weighted_metrics else "metrics"
        super().compile(optimizer=optimizer, loss=loss, **{metrics_argument: metrics}, **kwargs)

    def compile_from_config(self, config):
        """Compiles a model read from a `.keras` file as it was compiled when
        saved. Keras skips this step, with a warning, for a model whose
        `compile` is its own: the loaded model would keep no optimizer and
        would predict under the `"auto"` XLA rule, not its own setting."""
        config = keras.saving.deserialize_keras_object(config)
        keras.Model.compile(self, **config)  # the saved values, not "auto" defaults
        if self.built:
            self.optimizer.build(self.trainable_variables)

    def dataset(self, x, y=None, batch_size=32, shuffle=False, seed=0, training=False,
                ordered=False):
        """`input_pipeline(self, ...)`: raw inputs -> batches of network inputs."""
        return input_pipeline(self, x, y, batch_size, shuffle=shuffle, seed=seed,
                              training=training, ordered=ordered)

    def fit(self, x=None, y=None, batch_size=None, epochs=1, validation_data=None,
            shuffle=True, initial_epoch=0, skip_batches=0, seed=0, **kwargs):
        """Keras's `fit` on raw inputs (or a `tf.data.Dataset` of them).

        Beyond Keras's arguments, for in-memory data: `seed` fixes each
        epoch's order, and `skip_batches` runs epoch `initial_epoch` from
        that batch on, and only that epoch (resuming from a checkpoint taken
        mid-epoch; a second `fit` from `initial_epoch + 1` goes on).
        """
        batch_size = batch_size or 32
        if not isinstance(x, tf.data.Dataset):
            x, y = self.raw_examples(x, y)
        self.prepare_for_training(x, y)
        callbacks = list(kwargs.pop("callbacks", None) or [])
        if isinstance(x, tf.data.Dataset):
            data = input_pipeline(self, x, y, batch_size, training=True, skip_batches=skip_batches)
        else:
            epoch = EpochVariable(initial_epoch)
            callbacks.append(epoch)
            data = in_memory_batches(self, x, y, batch_size, training=True, shuffle=shuffle,
                                     seed=seed, epoch=epoch.variable, skip_batches=skip_batches)
        if skip_batches:
            # Resuming mid-epoch runs the rest of that one epoch only (shown
            # as epoch `initial_epoch + 1` of `epochs`); a second `fit` goes on.
            callbacks.append(StopAfterEpoch())
        kwargs["callbacks"] = callbacks
        self._build_optimizer()
        if type(self).augment is not RawInputModel.augment:  # no pipeline stage for nothing
            data = data.map(_on_inputs(self.augment), num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)
        if validation_data is not None:
            if isinstance(validation_data, tuple) and len(validation_data) == 2:
                validation_data = self.dataset(*validation_data, batch_size=batch_size)
            else:  # a tf.data.Dataset, or inputs that carry their labels (a folder)
                validation_data = self.dataset(validation_data, batch_size=batch_size)
        return super().fit(data, epochs=epochs, validation_data=validation_data,
                           shuffle=False, initial_epoch=initial_epoch, **kwargs)

    def evaluate(self, x=None, y=None, batch_size=None, **kwargs):
        if evaluates_fits_validation_data(kwargs):
            # Built by `fit` above; Keras reads it from its own cache.
            return super().evaluate(x, y, batch_size=batch_size, **kwargs)
        return super().evaluate(self.dataset(x, y, batch_size or 32), **kwargs)

    def predict(self, x, batch_size=None, **kwargs):
        batch_size = batch_size or 32
        callbacks = kwargs.get("callbacks")
        if not isinstance(callbacks, keras.callbacks.CallbackList):
            kwargs["callbacks"] = [*(callbacks or []), StopAfterLastPrediction()]
        if isinstance(x, tf.data.Dataset):
            return super().predict(self.dataset(x, batch_size=batch_size, ordered=True),
                                   **kwargs)
        x, _ = self.raw_examples(x)  # a folder's labels are not needed
        count = len(x)
        # Keras's `predict` calls its step on each batch's tensors, so a last
        # batch of another size traces the network a second time (3-5 s on
        # these models); filled up with copies of the first inputs, whose
        # outputs are dropped, every batch has one size.
        filler = -count % batch_size if count > batch_size else 0
        if filler:
            x = np.concatenate([x, x[:filler]])
        outputs = super().predict(in_memory_batches(self, x, None, batch_size, ordered=True),
                                  **kwargs)
        return tf.nest.map_structure(lambda output: output[:count], outputs)

    # Attention, for the training job's figure and statistics.

    def attention_maps(self, inputs, targets=None):
        """Every attention layer's weights on a batch of raw `inputs`:
        `[(name, weights (B, H, T_q, T_k), allowed, query mask (B, T_q))]`,
        `allowed` True where a query may attend a key (broadcastable).

        Called by the training job's `AttentionMonitor` at each epoch's end
        and by `save_attention_figure`.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement `attention_maps`.")

    def attention_tokens(self, inputs, targets=None):
        """Axis labels for `plot_attention_heads` of the first input:
        `(key tokens, query tokens)` per layer, or None. Called by
        `save_attention_figure`."""
        return None, None

    def attention_sample(self, inputs, targets=None):
        """`(inputs, targets)` of the one example the figure shows. Called
        by `save_attention_figure`."""
        return self.raw_array(inputs)[:1], None if targets is None else self.raw_array(targets)[:1]

    def text_of_about(self, inputs, words):
        """`(1,)` array: the text among the first 50 `inputs` whose word
        count is closest to `words` (a figure's panels stay readable)."""
        candidates = [str(t) for t in self.raw_array(inputs)[:50]]
        return np.array([min(candidates, key=lambda t: abs(len(t.split()) - words))])

    def attention_summary(self, inputs, targets=None):
        """`attention_maps` summarized (`zoo.report.LayerAttention` per
        layer): what the statistics and the figure read. A model whose
        inputs can be long overrides it to read the weights a few rows at a
        time, never holding `T x T` of them."""
        from zoo import report

        return report.summarize_maps(self.attention_maps(inputs, targets))

    def save_attention_figure(self, inputs, path, targets=None):
        """Every head of every attention layer on one of `inputs`, as a PNG
        grid (see `zoo.report.plot_attention_heads`); returns `[path]`, the
        figures written."""
        from zoo import report

        sample, sample_targets = self.attention_sample(inputs, targets)
        layers = self.attention_summary(sample, sample_targets)
        if any(layer.band is not None for layer in layers):
            return [report.plot_long_attention(
                layers, path, title=f"{type(self).__name__} on one example")]
        key_tokens, query_tokens = self.attention_tokens(sample, sample_targets)
        return [report.plot_attention_heads(
            layers, path, key_tokens, query_tokens,
            title=f"{type(self).__name__}: every head on one example")]

    # Helpers for subclasses.

    def in_graph(self, function, *texts):
        """Runs `function` on `(B,)` string tensors as a `tf.function` cached
        on the model, eager or inside a graph. Eager, keras-hub's tokenizers
        give Python lists; inside a graph, each `tf.data` pipeline (every
        `fit`, `evaluate` and `predict`) and each export would otherwise
        trace the tokenizers again: half of a small `predict`'s time.

        The cache, `self.graph_functions`, captures the tokenizers: a model
        resets it to `{}` when it replaces them. It is keyed by the
        function's name and `static_shapes`, which the function may read.
        """
        functions = getattr(self, "graph_functions", None)
        if functions is None:
            functions = {}
            set_untracked(self, graph_functions=functions)
        return traced_on_strings(functions, (function.__name__, self.static_shapes), function,
                                 *texts)

    def _tf_label_ids(self, labels):
        if labels.dtype == tf.string:
            table = tf.lookup.StaticHashTable(
                tf.lookup.KeyValueTensorInitializer(
                    tf.constant(list(self.label_names or [])),
                    tf.range(len(self.label_names or []), dtype=tf.int32),
                ),
                default_value=-1,
            )
            ids = table.lookup(labels)
            tf.debugging.assert_non_negative(
                ids, message=f"a label is not among the model's labels {self.label_names}"
            )
            return ids
        return tf.cast(labels, tf.int32)

    def _build_optimizer(self):
        # Without a strategy scope Keras builds the optimizer inside the first
        # traced train step, and `tf.function` then traces the whole step a
        # second time to lift the new variables out (10 of the image
        # classifier's 37 s of `fit` on 80 images); built first, it is traced once.
        if self.optimizer is not None and not self.optimizer.built and self.built:
            with self.distribute_strategy.scope():
                self.optimizer.build(self.trainable_variables)

    # Keras's private methods, overridden. Keras 3.15's `fit` and `evaluate`
    # under `MultiWorkerMirroredStrategy` (keras-team/keras#20585) fail in
    # two steps, and create an iterator per pass that no pass uses; these
    # route around them with `zoo.keras_compat`'s helpers.

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        one_iterator_per_pass(iterator)  # `fit` and `evaluate` hand theirs here
        return build_from_element_spec(super()._maybe_symbolic_build, iterator, data_batch)

    def train_step(self, data):
        return reducible_across_workers(super().train_step(data))

    def test_step(self, data):
        return reducible_across_workers(super().test_step(data))


def input_pipeline(model, x, y=None, batch_size=32, *, training=False, shuffle=False, seed=0,
                   ordered=False, epoch=None, skip_batches=0):
    """Whatever the user gave `fit`, `evaluate` or `predict` -> a `tf.data`
    pipeline of batches of the network's inputs (and targets).

    | `x` (and `y`) | what happens |
    |---|---|
    | NumPy array or list of raw inputs (texts; image bytes, paths or uint8 arrays), `y` labels (names or ids), target texts or None | `model.raw_examples`, then sliced (each worker keeps its share of a global batch), shuffled when `shuffle`, batched by `model.batch_raw`, preprocessed |
    | a folder of labelled images (image classifier) | read by `model.raw_examples`, then as above |
    | `tf.data.Dataset` of batches of raw inputs, or of `(inputs, labels)` batches | labels through `model.tf_targets`, batches preprocessed |
    | `tf.data.Dataset` of single raw inputs (or pairs) | batched by `model.batch_raw` (or preprocessed one by one, `model.preprocess_example`, then batched), preprocessed |
    | `tf.data.Dataset` whose inputs are not of `model.raw_dtypes` | taken as the network's inputs, used as it is |

    A `tf.data.Dataset` carries its labels: `y` must be None.

    Args:
        model: the `RawInputModel` whose hooks preprocess.
        x, y: as above.
        batch_size: examples per batch (in-memory data and unbatched
            datasets).
        training: `fit`'s data: the last partial batch is dropped where
            batch shapes must not change (XLA, a TPU).
        shuffle, seed: shuffle in-memory data, reproducibly.
        ordered: keep the inputs' order (`predict`).
        epoch: for `fit` on in-memory data, an int64 `tf.Variable` holding
            the epoch; each pass over the data reads it when it begins, and
            the order of the examples depends only on it and `seed`. A run
            resumed after batch `b` of epoch `e` then goes on with exactly
            the batches the interrupted run would have trained on next, on
            any number of replicas.
        skip_batches: batches of the first pass left out (resuming mid-epoch);
            fewer than the batches of a pass.

    Returns:
        A `tf.data.Dataset` (with a known number of batches for in-memory
        data).
    """
    if isinstance(x, tf.data.Dataset):
        if y is not None:
            raise ValueError("Give labels inside the dataset, not as `y`.")
        data = _raw_dataset_batches(model, x, batch_size, ordered)
        return data.skip(skip_batches) if skip_batches else data
    inputs, y = model.raw_examples(x, y)
    return in_memory_batches(model, inputs, y, batch_size, training=training, shuffle=shuffle,
                             seed=seed, ordered=ordered, epoch=epoch, skip_batches=skip_batches)


def in_memory_batches(model, inputs, y, batch_size, *, training=False, shuffle=False, seed=0,
                      ordered=False, epoch=None, skip_batches=0):
    """`input_pipeline` of in-memory data already through `model.raw_examples`
    (`fit` and `predict` convert it first, and it is not converted twice)."""
    columns = _columns(model, inputs, y)
    count = len(inputs)
    drop = training and _drops_remainder(model, count, batch_size)
    steps = count // batch_size if drop else -(-count // batch_size)
    if skip_batches >= steps:
        raise ValueError(
            f"`skip_batches` must be less than the {steps} batches of an epoch. "
            f"Received: skip_batches={skip_batches}.")
    if epoch is None:
        data = _slices(columns)
        if shuffle:
            data = data.shuffle(count, seed=seed, reshuffle_each_iteration=True)
        batches = model.batch_raw(data, batch_size, drop, ordered)
    else:
        # Batched with the same seed every pass: the order is the epoch's.
        batches = model.batch_raw(_epoch_examples(columns, epoch, shuffle, seed), batch_size,
                                  drop, ordered=ordered or not shuffle, seed=seed)
        # `flat_map` hides the number of batches, which Keras needs.
        batches = batches.apply(tf.data.experimental.assert_cardinality(steps))
    if skip_batches:
        batches = batches.skip(skip_batches)
    return _preprocessed(model, _sharded_by_data(batches))


def _raw_dataset_batches(model, data, batch_size, ordered):
    element = data.element_spec
    spec = element[0] if isinstance(element, tuple) else element
    if getattr(spec, "dtype", None) not in model.raw_dtypes:
        return data  # the network's inputs already
    if isinstance(element, tuple) and len(element) == 2:
        data = data.map(lambda inputs, labels: (inputs, model.tf_targets(labels)))
    if model.is_batched(spec):
        return _preprocessed(model, data)
    if model.preprocesses_each_example:
        return data.map(
            _on_inputs(model.preprocess_example), num_parallel_calls=AUTOTUNE,
        ).batch(batch_size).prefetch(AUTOTUNE)
    return _preprocessed(model, model.batch_raw(data, batch_size, ordered=ordered))


def traced_on_strings(cache, key, function, *texts):
    """`function(*texts)` on `(B,)` strings, through the `tf.function` kept
    in `cache[key]` (traced on first use), eager or inside a graph.

    What tokenizes is traced once this way (`RawInputModel.in_graph`,
    `TextPreprocessor`): eager, keras-hub's tokenizers give Python lists;
    inside a graph, each `tf.data` pipeline and each export would trace them
    again. The signature leaves the batch size unknown, so inside a graph it
    is set back from the inputs' (a TPU's batches need it static).
    """
    if key not in cache:
        cache[key] = tf.function(
            function, input_signature=[tf.TensorSpec([None], tf.string)] * len(texts))
    texts = [text if tf.is_tensor(text) else tf.constant(text, tf.string) for text in texts]
    outputs = cache[key](*texts)
    if tf.executing_eagerly():
        return outputs

    def batch_size_kept(output):
        if isinstance(output, tf.Tensor) and output.shape.rank:
            output.set_shape(texts[0].shape[:1].concatenate([None] * (output.shape.rank - 1)))
        return output

    return tf.nest.map_structure(batch_size_kept, outputs)


def _columns(model, inputs, y):
    if len(inputs) == 0:
        raise ValueError("No inputs: received an empty list or array.")
    if y is None:
        return (inputs,)
    targets = model.targets(y)
    if len(targets) != len(inputs):
        raise ValueError(f"Got {len(inputs)} inputs but {len(targets)} targets.")
    return inputs, targets


def _slices(columns):
    return tf.data.Dataset.from_tensor_slices(columns if len(columns) > 1 else columns[0])


def _epoch_examples(columns, epoch, shuffle, seed):
    """The examples of one pass, in an order that depends only on the epoch
    (read from `epoch` when the pass begins) and `seed`."""
    count = len(columns[0])

    def examples(number):
        order = tf.range(count)
        if shuffle:
            order = tf.random.experimental.stateless_shuffle(
                order, seed=tf.stack([tf.constant(seed, tf.int64), number]))
        return _slices(tuple(tf.gather(column, order) for column in columns))

    return tf.data.Dataset.from_tensors(0).map(lambda _: epoch.read_value()).flat_map(examples)


def _drops_remainder(model, count, batch_size):
    # XLA compiles the step again for every new batch shape; a TPU
    # needs static shapes.
    return (model.drop_remainder_in_training or model.static_shapes) and count >= batch_size


def _preprocessed(model, batches):
    def apply(*element):
        if len(element) == 2:
            return model.preprocess_pair(*element)
        return model.preprocess(element[0])

    return batches.map(apply, num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)


def _on_inputs(function):
    """`function` applied to the inputs of `inputs` or `(inputs, *labels)` elements."""
    def apply(*element):
        if len(element) > 1:
            return (function(element[0]), *element[1:])
        return function(element[0])

    return apply


def _sharded_by_data(data):
    # Arrays in memory: under several workers each keeps its share of every
    # global batch (there are no files to share out).
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return data.with_options(options)


class EpochVariable(keras.callbacks.Callback):
    """The epoch `fit` is in, as an int64 `tf.Variable` that the training
    data reads when a pass begins (`input_pipeline`'s `epoch`). Keras starts
    each epoch's pass after `on_epoch_begin` (its dataset has a known number
    of batches and no `steps_per_epoch`)."""

    def __init__(self, initial_epoch):
        super().__init__()
        self.variable = tf.Variable(initial_epoch, dtype=tf.int64, trainable=False,
                                    name="data_epoch")

    def on_epoch_begin(self, epoch, logs=None):
        self.variable.assign(epoch)


class StopAfterEpoch(keras.callbacks.Callback):
    """Ends `fit` after one epoch, which Keras shows as epoch
    `initial_epoch + 1` of all `epochs`."""

    def on_epoch_end(self, epoch, logs=None):
        self.model.stop_training = True


class StopAfterLastPrediction(keras.callbacks.Callback):
    """Ends `predict` after the last of its known number of batches, before
    Keras creates an iterator for a pass that never comes
    (`zoo.keras_compat.one_iterator_per_pass` says why)."""

    def on_predict_batch_end(self, batch, logs=None):
        steps = self.params.get("steps")
        if steps and batch + 1 >= steps:
            self.model.stop_predicting = True
