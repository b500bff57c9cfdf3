"""Text classifier: raw strings in, class probabilities out."""

import json
from pathlib import Path

import keras
import keras_hub
import numpy as np
import tensorflow as tf

import keras_selfattn as ksa
from zoo import presets as preset_io
from zoo.export import export_saved_model
from zoo.pipeline import RawInputModel

KIND = "text_classifier"
RESERVED_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")
PRESETS_DIR = Path(__file__).resolve().parent / "presets"
VOCABULARY_FILE = "vocabulary.txt"
LABELS_FILE = "labels.json"


def _shipped_presets():
    if not PRESETS_DIR.is_dir():
        return {}
    return {
        p.name: p for p in sorted(PRESETS_DIR.iterdir())
        if (p / preset_io.METADATA_FILE).is_file()
    }


class _ShippedPresets:
    """`TextClassifier.presets`: `{name: folder}` of the shipped presets."""

    def __get__(self, instance, owner):
        return _shipped_presets()


@keras.saving.register_keras_serializable(package="zoo")
class TextClassifier(RawInputModel):
    """A transformer text classifier that takes raw strings.

    Strings are tokenized with a WordPiece tokenizer (keras-hub, on
    tensorflow-text ops), wrapped in `[CLS] ... [SEP]` and padded or truncated
    to `sequence_length`; then `TokenAndPositionEmbedding`, `num_layers`
    `TransformerEncoderBlock`s with the chosen attention, masked mean pooling
    and a dense head. `fit`, `evaluate` and `predict` take raw strings (lists,
    arrays or `tf.data`) with int or string labels.

    Args:
        num_classes: number of classes; defaults to `len(labels)`.
        labels: class names, stored with the model and returned by the export.
        vocabulary: WordPiece vocabulary (list of tokens, starting with
            `[PAD] [UNK] [CLS] [SEP]`); when `None` it is learned from the
            training texts at the first `fit` (or by `adapt`).
        vocabulary_size: size of the learned vocabulary and of the embedding.
        sequence_length: tokens per text, `[CLS]`/`[SEP]` included; longer
            texts are truncated.
        hidden_dim, num_layers, num_heads, intermediate_dim, dropout: sizes.
        attention: `"multi_head"`, `"local_window"`, `"additive"` or
            `"self_attention"`.
        window_size: band half-width for `"local_window"`.

    Example:

    >>> model = TextClassifier(labels=["neg", "pos"], sequence_length=32)
    >>> model.fit(["good", "bad"] * 8, ["pos", "neg"] * 8, epochs=1, verbose=0)
    >>> model.predict(["good film"], verbose=0).shape
    (1, 2)
    """

    raw_input_spec = tf.TensorSpec((), tf.string)
    presets = _ShippedPresets()

    def __init__(self, num_classes=None, labels=None, vocabulary=None,
                 vocabulary_size=8000, sequence_length=128, hidden_dim=128,
                 num_layers=2, num_heads=4, intermediate_dim=256,
                 attention="multi_head", window_size=None, dropout=0.1,
                 **kwargs):
        if labels is not None:
            labels = [str(label) for label in labels]
            if len(set(labels)) != len(labels):
                raise ValueError(f"`labels` has duplicates. Received: labels={labels}")
            if num_classes is not None and num_classes != len(labels):
                raise ValueError(
                    f"num_classes={num_classes} disagrees with the {len(labels)} labels {labels}."
                )
            num_classes = len(labels)
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(
                "A classifier needs `num_classes` >= 2 (or two or more `labels`). "
                f"Received: num_classes={num_classes!r}, labels={labels!r}"
            )
        for name, value in (("vocabulary_size", vocabulary_size),
                            ("sequence_length", sequence_length)):
            if not isinstance(value, int) or value < 8:
                raise ValueError(f"`{name}` must be an int >= 8. Received: {name}={value!r}")
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.label_names = labels
        self.vocabulary_size = vocabulary_size
        self.sequence_length = sequence_length
        self.hidden_dim = hidden_dim
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.intermediate_dim = intermediate_dim
        self.attention = attention
        self.window_size = window_size
        self.dropout = dropout

        self.embedding = ksa.TokenAndPositionEmbedding(
            vocabulary_size, sequence_length, hidden_dim, mask_zero=True,
            name="embedding",
        )
        self.blocks = [
            ksa.TransformerEncoderBlock(
                num_heads, intermediate_dim, attention=attention,
                window_size=window_size, dropout=dropout,
                attention_dropout=dropout, name=f"encoder_{i}",
            )
            for i in range(num_layers)
        ]
        self.pooling = keras.layers.GlobalAveragePooling1D(name="pooling")
        self.head_dropout = keras.layers.Dropout(dropout, name="head_dropout")
        self.head = keras.layers.Dense(num_classes, dtype="float32", name="classifier_head")
        self._set_untracked(tokenizer=None, packer=None, vocabulary=None)
        if vocabulary is not None:
            self.set_vocabulary(vocabulary)
        # Calling the network once creates every weight, so presets and
        # checkpoints load into a complete model.
        self(np.zeros((1, sequence_length), "int32"))

    def _set_untracked(self, **attributes):
        # The tokenizer holds no weights and may be replaced after the network
        # is built (vocabulary learned at `fit`), which Keras's state tracking
        # forbids; the export module tracks it explicitly instead.
        for name, value in attributes.items():
            object.__setattr__(self, name, value)

    # Tokenization.

    def set_vocabulary(self, vocabulary):
        vocabulary = list(vocabulary)
        if tuple(vocabulary[:len(RESERVED_TOKENS)]) != RESERVED_TOKENS:
            raise ValueError(
                f"The vocabulary must start with {list(RESERVED_TOKENS)}. "
                f"Received: {vocabulary[:4]}"
            )
        if len(vocabulary) > self.vocabulary_size:
            raise ValueError(
                f"The vocabulary has {len(vocabulary)} tokens, more than "
                f"vocabulary_size={self.vocabulary_size}."
            )
        self._set_untracked(
            vocabulary=vocabulary,
            tokenizer=keras_hub.tokenizers.WordPieceTokenizer(
                vocabulary=vocabulary, lowercase=True, strip_accents=True,
                oov_token="[UNK]", dtype="int32",
            ),
            packer=keras_hub.layers.StartEndPacker(
                sequence_length=self.sequence_length,
                start_value=vocabulary.index("[CLS]"),
                end_value=vocabulary.index("[SEP]"),
                pad_value=0,
                return_padding_mask=False,
            ),
        )

    def adapt(self, texts):
        """Learns the WordPiece vocabulary from `texts`."""
        texts = [t for t in self.raw_array(texts).tolist() if t.strip()]
        if not texts:
            raise ValueError("Cannot learn a vocabulary from no (non-empty) text.")
        vocabulary = keras_hub.tokenizers.compute_word_piece_vocabulary(
            tf.data.Dataset.from_tensor_slices(texts).batch(256),
            vocabulary_size=self.vocabulary_size,
            lowercase=True,
            strip_accents=True,
            reserved_tokens=list(RESERVED_TOKENS),
        )
        self.set_vocabulary(vocabulary)

    def preprocess(self, texts):
        """`(B,)` strings -> `(B, sequence_length)` int32 token ids.

        Invalid UTF-8 is replaced by U+FFFD rather than failing the batch;
        texts longer than `sequence_length - 2` tokens are truncated.
        """
        if self.tokenizer is None:
            raise ValueError(
                "The model has no vocabulary yet: call `fit` (which learns "
                "one from the training texts), `adapt`, or load a preset."
            )
        texts = tf.strings.unicode_transcode(
            texts, "UTF-8", "UTF-8", errors="replace", replacement_char=0xFFFD
        )
        return self.packer(self.tokenizer(texts))

    def raw_array(self, x):
        if isinstance(x, str):
            raise TypeError(
                "Give a list of texts, not a single string. Received: a str."
            )
        array = np.asarray(x, dtype=object)
        if array.ndim != 1:
            raise ValueError(
                f"Texts must be a 1-D list or array. Received shape {array.shape}."
            )
        return np.array(
            [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in array],
            dtype=object,
        ).astype(str)

    def prepare_for_training(self, x, y):
        if self.tokenizer is None:
            if isinstance(x, tf.data.Dataset):
                raise ValueError(
                    "Learning a vocabulary needs the texts: call `adapt(texts)` "
                    "before fitting on a tf.data.Dataset."
                )
            self.adapt(x)
        if y is not None and not isinstance(x, tf.data.Dataset):
            labels = np.asarray(y)
            if labels.dtype.kind in "OSU" and self.label_names is None:
                names = sorted({str(v) for v in labels.tolist()})
                if len(names) != self.num_classes:
                    raise ValueError(
                        f"The labels hold {len(names)} classes {names[:10]}, "
                        f"but the model has num_classes={self.num_classes}."
                    )
                self.label_names = names
            distinct = np.unique(self.label_ids(y))
            if len(distinct) < 2:
                raise ValueError(
                    "The training labels hold a single class "
                    f"({self.display_labels()[int(distinct[0])]!r}); a classifier "
                    "needs examples of at least two."
                )

    def display_labels(self):
        return list(self.label_names or [str(i) for i in range(self.num_classes)])

    # The network.

    @property
    def input_dtype(self):
        # The network takes token ids; Keras uses this for autocasting and
        # for the default signature it traces when the model is saved.
        return "int32"

    def call(self, token_ids, training=None):
        x = self.embedding(token_ids)
        for block in self.blocks:
            x = block(x, training=training)
        x = self.pooling(x)
        return self.head(self.head_dropout(x, training=training))

    def attention_weights(self, text):
        """Tokens of `text` and the first block's weights `(heads, T, T)`."""
        ids = self.preprocess(tf.constant([text]))
        length = int(tf.reduce_sum(tf.cast(ids[0] != 0, tf.int32)))
        weights = self.blocks[0].attention_scores(
            self.embedding(ids), padding_mask=ids != 0
        )
        tokens = [self.vocabulary[int(i)] for i in ids[0][:length]]
        return tokens, np.asarray(weights)[0, :, :length, :length]

    def compile(self, optimizer="auto", loss="auto", metrics="auto", **kwargs):
        """`compile` with classifier defaults: AdamW, cross-entropy, accuracy."""
        if optimizer == "auto":
            optimizer = keras.optimizers.AdamW(1e-3, weight_decay=0.01)
        if loss == "auto":
            loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        if metrics == "auto":
            metrics = [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)

    def predict_labels(self, texts, batch_size=32):
        """`(names, probabilities)` for raw `texts`."""
        probabilities = keras.ops.convert_to_numpy(
            keras.ops.softmax(self.predict(texts, batch_size=batch_size, verbose=0))
        )
        names = self.display_labels()
        return [names[i] for i in probabilities.argmax(-1)], probabilities

    # Configuration, presets and export.

    def get_config(self):
        return {
            **super().get_config(),
            **self.architecture(),
            "labels": self.label_names,
            "vocabulary": self.vocabulary,
        }

    def architecture(self):
        return {
            "num_classes": self.num_classes,
            "vocabulary_size": self.vocabulary_size,
            "sequence_length": self.sequence_length,
            "hidden_dim": self.hidden_dim,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "intermediate_dim": self.intermediate_dim,
            "attention": self.attention,
            "window_size": self.window_size,
            "dropout": self.dropout,
        }

    def save_to_preset(self, folder, metadata=None):
        """Writes config, weights, vocabulary and labels, checksummed."""
        if self.tokenizer is None:
            raise ValueError("The model has no vocabulary yet; fit or adapt it first.")
        # An uncompiled twin writes the network's weights without the
        # optimizer's slots, which would triple the file.
        twin = type(self)(**self.architecture(), labels=self.label_names,
                          vocabulary=self.vocabulary)
        twin.set_weights(self.get_weights())
        return preset_io.save_preset(
            folder, KIND, self.architecture(), twin.save_weights,
            assets={
                VOCABULARY_FILE: "\n".join(self.vocabulary) + "\n",
                LABELS_FILE: json.dumps(self.display_labels()),
            },
            metadata=metadata,
        )

    @classmethod
    def from_preset(cls, preset, num_classes=None, labels=None, **overrides):
        """Loads a shipped preset by name, or a preset folder.

        A `num_classes` (or `labels`) different from the preset's keeps the
        pretrained body and gives a fresh head. `overrides` may change the
        dropout; sizes that shape weights cannot change.
        """
        loaded = preset_io.load_preset(preset_io.resolve(preset, _shipped_presets()), KIND)
        config = dict(loaded.config)
        vocabulary = loaded.asset(VOCABULARY_FILE).read_text(encoding="utf-8").splitlines()
        preset_labels = json.loads(loaded.asset(LABELS_FILE).read_text())
        shaping = set(config) - {"dropout", "num_classes"}
        changed = {k for k in overrides if k in shaping and overrides[k] != config[k]}
        if changed:
            raise ValueError(
                f"Cannot change {sorted(changed)} of a pretrained preset: they "
                "shape its weights. Only `dropout`, `num_classes` and `labels` "
                "may differ."
            )
        pretrained = cls(**{**config, "labels": preset_labels}, vocabulary=vocabulary)
        try:
            pretrained.load_weights(str(loaded.weights))
        except Exception as error:  # keras raises several types here
            raise ValueError(f"{loaded.weights} does not match the preset's config: {error}") from None
        wanted = len(labels) if labels is not None else (num_classes or config["num_classes"])
        same_head = wanted == config["num_classes"] and (labels is None or list(labels) == preset_labels)
        if same_head and not overrides:
            return pretrained
        model = cls(**{**config, **overrides, "num_classes": None if labels else wanted,
                       "labels": labels if labels is not None else (preset_labels if same_head else None)},
                    vocabulary=vocabulary)
        for source, target in zip(pretrained.layers, model.layers):
            if source.name != "classifier_head" or same_head:
                target.set_weights(source.get_weights())
        return model

    def export(self, folder, version=None):
        """Exports a TF Serving SavedModel to `folder/<version>/`.

        Signature `serving_default`: `{"text": tf.string[None]}` ->
        `{"probabilities": float32[None, C], "label": tf.string[None],
        "label_id": int64[None]}`, tokenization inside the graph. Loads with
        `tensorflow` and `tensorflow_text` alone.
        """
        module = _TextClassifierServing(self)
        serve = module.serve.get_concrete_function()
        return export_saved_model(module, folder, {"serving_default": serve}, version)


class _TextClassifierServing(tf.Module):
    """What the SavedModel tracks: the network, the tokenizer, the labels."""

    def __init__(self, classifier):
        super().__init__()
        if classifier.tokenizer is None:
            raise ValueError("The model has no vocabulary yet; fit or adapt it first.")
        self.classifier = classifier
        self.tokenizer = classifier.tokenizer
        self.variables_ = list(classifier.variables)
        self.label_names = tf.constant(classifier.display_labels())

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def serve(self, text):
        logits = self.classifier(self.classifier.preprocess(text), training=False)
        probabilities = tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1)
        label_id = tf.argmax(probabilities, axis=-1, output_type=tf.int64)
        return {
            "probabilities": probabilities,
            "label": tf.gather(self.label_names, label_id),
            "label_id": label_id,
        }
