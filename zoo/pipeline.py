"""Models that `fit`, `evaluate` and `predict` on raw inputs (strings, images).

Preprocessing (tokenizing, decoding) runs in the `tf.data` pipeline, as in
keras-hub's tasks, so the Keras model itself works on tensors (token ids,
pixels) and trains fast; the same preprocessing functions are traced into the
exported SavedModel, so serving sees exactly what training saw.
"""

import keras
import numpy as np
import tensorflow as tf

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


def length_grouped_batches(data, batch_size, drop_remainder=False):
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

    batches = data.batch(run).flat_map(sorted_batches).shuffle(32)
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
        inputs, y = self.raw_examples(x, y)
        if len(inputs) == 0:
            raise ValueError("No inputs: received an empty list or array.")
        if y is None:
            data = tf.data.Dataset.from_tensor_slices(inputs)
        else:
            targets = self.targets(y)
            if len(targets) != len(inputs):
                raise ValueError(
                    f"Got {len(inputs)} inputs but {len(targets)} targets."
                )
            data = tf.data.Dataset.from_tensor_slices((inputs, targets))
        if shuffle:
            data = data.shuffle(len(inputs), seed=seed, reshuffle_each_iteration=True)
        drop = training and self.drop_remainder_in_training and len(inputs) >= batch_size
        return self._preprocessed(self.batch_raw(data, batch_size, drop, ordered))

    def batch_raw(self, data, batch_size, drop_remainder=False, ordered=False):
        """Batches raw examples (before `preprocess`): texts of similar
        length together when `groups_by_length`, unless `ordered`."""
        if self.groups_by_length and not ordered:
            return length_grouped_batches(data, batch_size, drop_remainder)
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
            object.__setattr__(self, "graph_functions", functions)
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
            shuffle=True, **kwargs):
        batch_size = batch_size or 32
        if not isinstance(x, tf.data.Dataset):
            x, y = self.raw_examples(x, y)
        self.prepare_for_training(x, y)
        data = self.dataset(x, y, batch_size, shuffle=shuffle, training=True)
        if self.augment is not None:
            data = data.map(lambda inputs, labels: (self.augment(inputs), labels),
                            num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)
        if validation_data is not None:
            if isinstance(validation_data, tuple) and len(validation_data) == 2:
                validation_data = self.dataset(*validation_data, batch_size=batch_size)
            else:  # a tf.data.Dataset, or inputs that carry their labels (a folder)
                validation_data = self.dataset(validation_data, batch_size=batch_size)
        return super().fit(data, epochs=epochs, validation_data=validation_data,
                           shuffle=False, **kwargs)

    def evaluate(self, x=None, y=None, batch_size=None, **kwargs):
        return super().evaluate(self.dataset(x, y, batch_size or 32), **kwargs)

    def predict(self, x, batch_size=None, **kwargs):
        if not isinstance(x, tf.data.Dataset):
            x, _ = self.raw_examples(x)  # a folder's labels are not needed
        return super().predict(
            self.dataset(x, batch_size=batch_size or 32, ordered=True), **kwargs
        )

    def prepare_for_training(self, x, y):
        """Hook run before `fit` builds its dataset (e.g. to learn a vocabulary)."""

