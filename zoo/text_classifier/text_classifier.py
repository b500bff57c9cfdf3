"""Text classifier: raw strings in, class probabilities out."""

from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from zoo.classifier import HEAD_NAME, ClassifierModel, ClassifierServing
from zoo.export import export_saved_model
from zoo.pipeline import text_array, valid_utf8
from zoo.presets import preset_kind, resolve, shipped_presets
from zoo.text_encoder.body import TextBody, tiled_positions
from zoo.text_encoder.model import KIND as ENCODER_KIND
from zoo.text_encoder.model import TextEncoder

KIND = "text_classifier"
PRESETS_DIR = Path(__file__).resolve().parent / "presets"
FINE_TUNING_DROPOUT = 0.1


@keras.saving.register_keras_serializable(package="zoo")
class TextClassifier(TextBody, ClassifierModel):
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
        embedding_norm: layer-normalize the embeddings before the first
            block, as BERT does (the pretrained body does).
        normalize_first: pre-norm blocks (layer norm before attention and
            feed-forward) and a layer norm after the last one.

    Example:

    >>> model = TextClassifier(labels=["neg", "pos"], sequence_length=32)
    >>> model.fit(["good", "bad"] * 8, ["pos", "neg"] * 8, epochs=1, verbose=0)
    >>> model.predict(["good film"], verbose=0).shape
    (1, 2)
    """

    groups_by_length = True

    raw_input_spec = tf.TensorSpec((), tf.string)
    kind = KIND
    presets_dir = PRESETS_DIR
    # A longer `sequence_length` extends the position embeddings (copies of
    # the learned ones); `local_window` attention has the weights of
    # `multi_head`, so a body pretrained with one fine-tunes with the other.
    adjustable_at_load = ("dropout", "num_classes", "sequence_length", "attention", "window_size")

    def __init__(self, num_classes=None, labels=None, vocabulary=None,
                 vocabulary_size=8000, sequence_length=128, hidden_dim=128,
                 num_layers=2, num_heads=4, intermediate_dim=256,
                 attention="multi_head", window_size=None, dropout=0.1,
                 embedding_norm=False, normalize_first=False, **kwargs):
        super().__init__(num_classes, labels, **kwargs)
        self.build_body(vocabulary_size, sequence_length, hidden_dim, num_layers,
                        num_heads, intermediate_dim, attention, window_size, dropout,
                        embedding_norm, normalize_first)
        self.pooling = keras.layers.GlobalAveragePooling1D(name="pooling")
        self.head_dropout = keras.layers.Dropout(dropout, name="head_dropout")
        self.head = keras.layers.Dense(self.num_classes, dtype="float32", name=HEAD_NAME)
        if vocabulary is not None:
            self.set_vocabulary(vocabulary)
        # Calling the network once creates every weight, so presets and
        # checkpoints load into a complete model.
        self(np.zeros((1, sequence_length), "int32"))

    # Tokenization.

    def adapt(self, texts):
        """Learns the WordPiece vocabulary from `texts`."""
        self.learn_vocabulary(self.raw_array(texts).tolist())

    def preprocess(self, texts):
        """`(B,)` strings -> `(B, T)` int32 token ids, `[CLS]` first and
        `[SEP]` last, padded with 0 to the longest text of the batch
        (rounded up to a multiple of 8).

        `T <= sequence_length`: texts longer than `sequence_length - 2`
        tokens are truncated. Padding to the batch rather than to
        `sequence_length` changes no prediction (padding is masked) and
        makes a step cost what its texts hold. Invalid UTF-8 is replaced by
        U+FFFD rather than failing the batch.
        """
        self.check_vocabulary()
        if tf.executing_eagerly():
            return self.in_graph(self.preprocess, texts)
        tokens = self.tokenizer(valid_utf8(texts))[:, :self.sequence_length - 2]
        rows = tokens.nrows()
        ids = tf.concat([
            tf.fill([rows, 1], self.start_id), tokens,
            tf.fill([rows, 1], self.end_id),
        ], axis=1)
        # To a multiple of 8: few distinct shapes, so a compiled (XLA) step
        # is compiled a few times, not once per length.
        longest = tf.reduce_max(ids.row_lengths())
        length = tf.minimum((longest + 7) // 8 * 8, self.sequence_length)
        if self.static_shapes:  # a TPU compiles one shape
            length = tf.constant(self.sequence_length, longest.dtype)
        return ids.to_tensor(0, shape=tf.stack([rows, tf.cast(length, rows.dtype)]))

    def raw_array(self, x):
        return text_array(x)

    def prepare_for_training(self, x, y):
        if self.tokenizer is None:
            if isinstance(x, tf.data.Dataset):
                raise ValueError(
                    "Learning a vocabulary needs the texts: call `adapt(texts)` "
                    "before fitting on a tf.data.Dataset."
                )
            self.adapt(x)
        super().prepare_for_training(x, y)

    # The network.

    @property
    def input_dtype(self):
        # The network takes token ids; Keras uses this for autocasting and
        # for the default signature it traces when the model is saved.
        return "int32"

    def call(self, token_ids, training=None):
        x = self.pooling(self.encode(token_ids, training=training))
        return self.head(self.head_dropout(x, training=training))

    def attention_maps(self, inputs, targets=None):
        ids = self.preprocess(tf.constant(self.raw_array(inputs)))
        mask = ids != 0
        x, maps = self.embed(ids), []
        for number, block in enumerate(self.blocks, 1):
            weights = block.attention_scores(x, padding_mask=mask)
            maps.append((f"block {number}", np.asarray(weights), mask.numpy()[:, None, None, :],
                         mask.numpy()))
            x = block(x, padding_mask=mask)
        return maps

    def attention_tokens(self, inputs, targets=None):
        ids = self.preprocess(tf.constant(self.raw_array(inputs)[:1])).numpy()[0]
        return [self.vocabulary[int(i)] for i in ids if i != 0], None

    def attention_sample(self, inputs, targets=None):
        # A sentence of about 12 words keeps the panels readable.
        candidates = [str(t) for t in self.raw_array(inputs)[:50]]
        return np.array([min(candidates, key=lambda t: abs(len(t.split()) - 12))]), None

    # Configuration, presets and export.

    def architecture(self):
        return {"num_classes": self.num_classes, **self.body_architecture()}

    def write_assets(self):
        return {**super().write_assets(), **self.vocabulary_asset()}

    @classmethod
    def all_presets(cls):
        """The shipped classifier presets and the shipped text bodies
        (`TextEncoder.presets`), which `from_preset` also loads."""
        return {**shipped_presets(PRESETS_DIR), **TextEncoder.presets}

    @classmethod
    def is_body_preset(cls, preset):
        """Whether `preset` (a name or folder) is a pretrained text body."""
        return preset_kind(resolve(preset, cls.all_presets())) == ENCODER_KIND

    @classmethod
    def from_preset(cls, preset, num_classes=None, labels=None, **overrides):
        """Loads a classifier preset, or puts a fresh head on a pretrained
        text body (a `TextEncoder` preset such as `"english_body_small"`).

        For a body, `labels` (or `num_classes`) is required, and dropout is
        `FINE_TUNING_DROPOUT` (BERT's 0.1, whatever dropout the body was
        pretrained with) unless given. For both,
        `overrides` may change `dropout`, `sequence_length` (a longer one
        extends the learned position embeddings by copying them end to end,
        see `tiled_positions`), `attention` and `window_size` (between
        `"multi_head"` and `"local_window"`, which share their weights).
        """
        if not cls.is_body_preset(preset):
            return super().from_preset(preset, num_classes=num_classes, labels=labels, **overrides)
        if labels is None and num_classes is None:
            raise ValueError(
                f"{preset!r} is a pretrained text body without a classifier head: "
                "give the classes, e.g. `labels=['negative', 'positive']` or `num_classes=2`."
            )
        encoder = TextEncoder.from_preset(preset)
        config = {**encoder.body_architecture(), "dropout": FINE_TUNING_DROPOUT}
        cls.check_overrides(config, overrides)
        model = cls(num_classes=num_classes, labels=labels, vocabulary=encoder.vocabulary,
                    **{**config, **overrides})
        model.transfer_weights(encoder, same_head=False)
        return model

    def transfer_layer(self, source, target):
        if target is self.embedding and source.sequence_length != target.sequence_length:
            target.token_embedding.set_weights(source.token_embedding.get_weights())
            target.position_embedding.position_embeddings.assign(tiled_positions(
                source.position_embedding.position_embeddings, target.sequence_length))
            return
        super().transfer_layer(source, target)

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


class _TextClassifierServing(ClassifierServing):
    """What the SavedModel tracks: the network, the tokenizer, the labels."""

    def __init__(self, classifier):
        if classifier.tokenizer is None:
            raise ValueError("The model has no vocabulary yet; fit or adapt it first.")
        super().__init__(classifier)
        self.tokenizer = classifier.tokenizer

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def serve(self, text):
        return self.outputs(self.classifier.preprocess(text))
