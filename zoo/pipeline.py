"""Models that `fit`, `evaluate` and `predict` on raw inputs (strings, images).

Preprocessing (tokenizing, decoding) runs in the `tf.data` pipeline, as in
keras-hub's tasks, so the Keras model itself works on tensors (token ids,
pixels) and trains fast; the same preprocessing functions are traced into the
exported SavedModel, so serving sees exactly what training saw.
"""

import keras
import numpy as np
import tensorflow as tf

from zoo.keras_compat import build_on_local_batch, reducible_across_workers, set_untracked

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


def learn_word_piece_vocabulary(texts, size, reserved_tokens, lowercase):
    """A WordPiece vocabulary of at most `size` tokens (keras-hub's learner)
    from the non-blank `texts`, `reserved_tokens` first; accents are kept
    exactly when case is."""
    import keras_hub

    texts = [t for t in texts if t.strip()]
    if not texts:
        raise ValueError("Cannot learn a vocabulary from no (non-empty) text.")
    return keras_hub.tokenizers.compute_word_piece_vocabulary(
        tf.data.Dataset.from_tensor_slices(texts).batch(256),
        vocabulary_size=size, lowercase=lowercase, strip_accents=lowercase,
        reserved_tokens=list(reserved_tokens),
    )


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
    """Base of the zoo models. Subclasses implement:

    - `preprocess(inputs)`: a batch of raw inputs -> model inputs (TF ops).
    - `raw_input_spec`: the `tf.TensorSpec` of one raw input.
    and may override:
    - `raw_dtypes`: the dtypes raw inputs come in (default: the spec's);
      anything else in a `tf.data.Dataset` is taken as already preprocessed.
    - `is_batched(spec)`: whether a dataset's elements are batches.
    - `preprocess_example(input)`: one raw input -> fixed-shape model input,
      for unbatched datasets whose inputs cannot be batched as they are
      (images of different sizes).
    - `raw_examples(x, y)`: `fit`/`evaluate`/`predict` arguments -> `(raw
      inputs, labels)` (e.g. a folder of labelled files).
    - `augment(model_inputs)`: random augmentation of a preprocessed batch,
      applied to `fit`'s training data only, in the pipeline, so that the
      network stays free of ops XLA cannot compile.
    - `batch_raw(data, batch_size, drop_remainder, ordered)`: how raw
      examples are grouped into batches; with `groups_by_length`, similar
      lengths together unless `ordered` (`predict`).
    - `targets(y)`, `tf_targets(y)` and `preprocess_pair(inputs, targets)`:
      what `y` becomes (default: label ids, by name or number) and how a
      batch of raw pairs becomes the model's `(x, y[, sample_weight])`
      (default: `(preprocess(inputs), targets)`); a translator's targets
      are texts.
    and may keep label names in `self.label_names`.
    """

    raw_input_spec = None
    label_names = None
    # Text models pad each batch to its longest text: grouping similar
    # lengths (`length_grouped_batches`) spares the padding.
    groups_by_length = False
    preprocess_example = None
    augment = None
    # Whether `fit` drops the last, partial batch of in-memory training
    # data: under XLA every new batch shape compiles the step again.
    drop_remainder_in_training = False
    # Every batch padded to the full sequence length, partial batches
    # dropped: what a TPU needs (set by `zoo.training.TrainingRun`).
    static_shapes = False
    # Whether `attention_maps` needs the targets (a decoder's attention does).
    attention_needs_targets = False

    def preprocess(self, inputs):
        raise NotImplementedError

    @property
    def raw_dtypes(self):
        return (self.raw_input_spec.dtype,)

    def is_batched(self, element_spec):
        return element_spec.shape.rank == self.raw_input_spec.shape.rank + 1

    def raw_examples(self, x, y=None):
        return self.raw_array(x), y

    def targets(self, y):
        return self.label_ids(y)

    def tf_targets(self, y):
        return self._tf_label_ids(y)

    def preprocess_pair(self, inputs, targets):
        return self.preprocess(inputs), targets

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

    # Datasets.

    def dataset(self, x, y=None, batch_size=32, shuffle=False, seed=0, training=False,
                ordered=False):
        """Raw inputs (list, array or `tf.data`) -> batched, preprocessed data.

        `ordered`: the batches must follow the inputs' order (`predict`).
        """
        if isinstance(x, tf.data.Dataset):
            if y is not None:
                raise ValueError("Give labels inside the dataset, not as `y`.")
            data = x
            element = data.element_spec
            spec = element[0] if isinstance(element, tuple) else element
            if getattr(spec, "dtype", None) not in self.raw_dtypes:
                # Keras's `fit` validates by calling `evaluate` on the dataset
                # this method already built.
                return data
            if isinstance(element, tuple) and len(element) == 2:
                data = data.map(lambda a, b: (a, self.tf_targets(b)))
            if self.is_batched(spec):
                return self._preprocessed(data)
            if self.preprocess_example is not None:
                return data.map(
                    self._preprocess_element(self.preprocess_example),
                    num_parallel_calls=AUTOTUNE,
                ).batch(batch_size).prefetch(AUTOTUNE)
            return self._preprocessed(
                self.batch_raw(data, batch_size, ordered=ordered)
            )
        data = self._examples(x, y)
        if shuffle:
            data = data.shuffle(int(data.cardinality()), seed=seed,
                                reshuffle_each_iteration=True)
        drop = training and self._drops_remainder(int(data.cardinality()), batch_size)
        return self._preprocessed(self.batch_raw(data, batch_size, drop, ordered))

    def training_batches(self, x, y, batch_size, epoch, skip_batches=0, shuffle=True, seed=0):
        """In-memory raw training data -> `(batches, steps_per_epoch)`: one
        epoch of preprocessed batches, less the first `skip_batches`.

        `epoch()` gives the epoch number (a scalar int64 tensor) when a pass
        over the dataset begins; the order of the examples depends only on
        it and `seed`, so a run resumed from a checkpoint taken after batch
        `b` of epoch `e` goes on with exactly the batches the interrupted
        run would have trained on next, on any number of replicas.
        """
        inputs, y = self.raw_examples(x, y)
        columns = self._columns(inputs, y)
        count = len(inputs)
        drop = self._drops_remainder(count, batch_size)
        steps = count // batch_size if drop else -(-count // batch_size)

        def examples(number):
            order = tf.range(count)
            if shuffle:
                order = tf.random.experimental.stateless_shuffle(
                    order, seed=tf.stack([tf.constant(seed, tf.int64), number]))
            picked = tuple(tf.gather(column, order) for column in columns)
            return tf.data.Dataset.from_tensor_slices(picked if len(picked) > 1 else picked[0])

        data = tf.data.Dataset.from_tensors(0).map(lambda _: epoch()).flat_map(examples)
        batches = self.batch_raw(data, batch_size, drop, ordered=not shuffle, seed=seed)
        batches = batches.skip(skip_batches).apply(
            tf.data.experimental.assert_cardinality(steps - skip_batches))
        return self._preprocessed(_sharded_by_data(batches)), steps

    def _columns(self, inputs, y):
        if len(inputs) == 0:
            raise ValueError("No inputs: received an empty list or array.")
        if y is None:
            return (inputs,)
        targets = self.targets(y)
        if len(targets) != len(inputs):
            raise ValueError(f"Got {len(inputs)} inputs but {len(targets)} targets.")
        return inputs, targets

    def _examples(self, x, y):
        inputs, y = self.raw_examples(x, y)
        columns = self._columns(inputs, y)
        data = tf.data.Dataset.from_tensor_slices(columns if len(columns) > 1 else columns[0])
        return _sharded_by_data(data)

    def _drops_remainder(self, count, batch_size):
        # XLA compiles the step again for every new batch shape; a TPU
        # needs static shapes.
        return (self.drop_remainder_in_training or self.static_shapes) and count >= batch_size

    def batch_raw(self, data, batch_size, drop_remainder=False, ordered=False, seed=None):
        """Batches raw examples (before `preprocess`): texts of similar
        length together when `groups_by_length`, unless `ordered`."""
        if self.groups_by_length and not ordered and not self.static_shapes:
            return length_grouped_batches(data, batch_size, drop_remainder, seed)
        return data.batch(batch_size, drop_remainder=drop_remainder)

    def _preprocessed(self, batches):
        def apply(*element):
            if len(element) == 2:
                return self.preprocess_pair(*element)
            return self.preprocess(element[0])

        return batches.map(apply, num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)

    def raw_array(self, x):
        return np.asarray(x)

    def in_graph(self, function, *texts):
        """Runs `function` on string tensors as a (cached) `tf.function` when
        called eagerly: keras-hub's tokenizers give Python lists there.

        The cache, `self.graph_functions`, captures the tokenizers: a model
        resets it to `{}` when it replaces them.
        """
        if not tf.executing_eagerly():
            return function(*texts)
        functions = getattr(self, "graph_functions", None)
        if functions is None:
            functions = {}
            set_untracked(self, graph_functions=functions)
        key = function.__name__
        if key not in functions:
            spec = tf.TensorSpec([None], tf.string)
            functions[key] = tf.function(function, input_signature=[spec] * len(texts))
        return functions[key](*(tf.constant(t) for t in texts))

    @staticmethod
    def _preprocess_element(function):
        def apply(*element):
            if len(element) == 2:
                return function(element[0]), element[1]
            return function(element[0])

        return apply

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

    # Keras entry points on raw data.

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
            data = self.dataset(x, y, batch_size, shuffle=shuffle, training=True)
            data = data.skip(skip_batches) if skip_batches else data
        else:
            epoch = _EpochNumber(initial_epoch)
            callbacks.append(epoch)
            data, steps = self.training_batches(
                x, y, batch_size, epoch.tensor, skip_batches, shuffle, seed)
            if skip_batches >= steps:
                raise ValueError(
                    f"`skip_batches` must be less than the {steps} batches of an epoch. "
                    f"Received: skip_batches={skip_batches}."
                )
        if skip_batches:
            # Resuming mid-epoch runs the rest of that one epoch only (shown
            # as epoch `initial_epoch + 1` of `epochs`); a second `fit` goes on.
            callbacks.append(StopAfterEpoch())
        kwargs["callbacks"] = callbacks
        self._build_optimizer()
        if self.augment is not None:
            data = data.map(lambda inputs, labels: (self.augment(inputs), labels),
                            num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)
        if validation_data is not None:
            if isinstance(validation_data, tuple) and len(validation_data) == 2:
                validation_data = self.dataset(*validation_data, batch_size=batch_size)
            else:  # a tf.data.Dataset, or inputs that carry their labels (a folder)
                validation_data = self.dataset(validation_data, batch_size=batch_size)
        return super().fit(data, epochs=epochs, validation_data=validation_data,
                           shuffle=False, initial_epoch=initial_epoch, **kwargs)

    def _build_optimizer(self):
        # Without a strategy scope Keras builds the optimizer inside the first
        # traced train step, and `tf.function` then traces the whole step a
        # second time to lift the new variables out (10 of the image
        # classifier's 37 s of `fit` on 80 images); built first, it is traced once.
        if self.optimizer is not None and not self.optimizer.built and self.built:
            with self.distribute_strategy.scope():
                self.optimizer.build(self.trainable_variables)

    def evaluate(self, x=None, y=None, batch_size=None, **kwargs):
        return super().evaluate(self.dataset(x, y, batch_size or 32), **kwargs)

    def predict(self, x, batch_size=None, **kwargs):
        batch_size = batch_size or 32
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
        outputs = super().predict(self.dataset(x, batch_size=batch_size, ordered=True), **kwargs)
        return tf.nest.map_structure(lambda output: output[:count], outputs)

    def prepare_for_training(self, x, y):
        """Hook run before `fit` builds its dataset (e.g. to learn a vocabulary)."""

    # Attention, for the training job's figure and statistics.

    def attention_maps(self, inputs, targets=None):
        """Every attention layer's weights on a batch of raw `inputs`:
        `[(name, weights (B, H, T_q, T_k), allowed, query mask (B, T_q))]`,
        `allowed` True where a query may attend a key (broadcastable)."""
        raise NotImplementedError

    def attention_tokens(self, inputs, targets=None):
        """Axis labels for `plot_attention_heads` of the first input:
        `(key tokens, query tokens)` per layer, or None."""
        return None, None

    def attention_sample(self, inputs, targets=None):
        """`(inputs, targets)` of the one example the figure shows."""
        return self.raw_array(inputs)[:1], None if targets is None else self.raw_array(targets)[:1]

    def text_of_about(self, inputs, words):
        """`(1,)` array: the text among the first 50 `inputs` whose word
        count is closest to `words` (a figure's panels stay readable)."""
        candidates = [str(t) for t in self.raw_array(inputs)[:50]]
        return np.array([min(candidates, key=lambda t: abs(len(t.split()) - words))])

    def save_attention_figure(self, inputs, path, targets=None):
        """Every head of every attention layer on one of `inputs`, as a PNG
        grid (see `zoo.report.plot_attention_heads`); returns `[path]`, the
        figures written."""
        from zoo import report

        sample, sample_targets = self.attention_sample(inputs, targets)
        maps = []
        for name, weights, allowed, query_mask in self.attention_maps(sample, sample_targets):
            allowed = np.broadcast_to(np.asarray(allowed, bool)[0], np.shape(weights)[1:])
            queries = np.asarray(query_mask, bool)[0]
            keys = allowed.any(axis=(0, 1))
            weights = np.asarray(weights, np.float32)[0][:, queries][:, :, keys]
            maps.append((name, weights, allowed[:1][:, queries][:, :, keys]))
        key_tokens, query_tokens = self.attention_tokens(sample, sample_targets)
        return [report.plot_attention_heads(
            maps, path, key_tokens, query_tokens,
            title=f"{type(self).__name__}: every head on one example")]

    # Keras 3.15's `fit` and `evaluate` under `MultiWorkerMirroredStrategy`
    # (keras-team/keras#20585) fail in two private steps; these overrides
    # route around them with `zoo.keras_compat`'s helpers.

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        return build_on_local_batch(self, super()._maybe_symbolic_build, iterator, data_batch)

    def train_step(self, data):
        return reducible_across_workers(super().train_step(data))

    def test_step(self, data):
        return reducible_across_workers(super().test_step(data))


def _sharded_by_data(data):
    # Arrays in memory: under several workers each keeps its share of every
    # global batch (there are no files to share out).
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return data.with_options(options)


class _EpochNumber(keras.callbacks.Callback):
    """The epoch `fit` is in, for the training data to read when a pass
    begins. Keras starts each epoch's pass after `on_epoch_begin` (its
    dataset has a known number of batches and no `steps_per_epoch`)."""

    def __init__(self, initial_epoch):
        super().__init__()
        self.epoch = initial_epoch

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def tensor(self):
        return tf.py_function(lambda: np.int64(self.epoch), [], tf.int64)


class StopAfterEpoch(keras.callbacks.Callback):
    """Ends `fit` after one epoch, which Keras shows as epoch
    `initial_epoch + 1` of all `epochs`."""

    def on_epoch_end(self, epoch, logs=None):
        self.model.stop_training = True



