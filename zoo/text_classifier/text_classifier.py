"""The text classifier task: a backbone, a preprocessor and a head."""

from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from zoo.backbone import attention_through, summarize_attention_through
from zoo.classifier import HEAD_NAME, ClassifierModel, ClassifierServing
from zoo.export import checked_texts, export_saved_model, traced_signatures
from zoo.pipeline import text_array
from zoo.presets import KERAS_ARGUMENTS, preset_config, shipped_presets
from zoo.text_transformer import bodies
from zoo.text_transformer.backbone import TextBackbone
from zoo.text_transformer.preprocessor import TextPreprocessor

KIND = "text_classifier"
PRESETS_DIR = Path(__file__).resolve().parent / "presets"
FINE_TUNING_DROPOUT = 0.1
POOLINGS = ("mean", "first")
# A network from scratch: `TextClassifier(labels=..., **sizes)`, each size
# defaulting to these.
FROM_SCRATCH_SIZES = dict(
    vocabulary_size=8000, sequence_length=128, hidden_dim=128, num_layers=2, num_heads=4,
    intermediate_dim=256, attention="multi_head", window_size=None, global_tokens=0,
    embedding_norm=False, normalize_first=False, rematerialize=False,
)
# What `from_preset` may change in a pretrained network (the rest shapes its weights).
# What one request to the exported model may hold by default (`export`):
# texts of up to 16 KB (or 8 bytes a token of the model's sequence length,
# when more), and as many texts as make 32,768 tokens at the model's sequence
# length, so that the cost of the worst request admitted does not grow with
# the sequence length (`bench/RESULTS.md`, "Serving limits").
REQUEST_TOKEN_BUDGET = 32_768
MIN_REQUEST_TEXT_BYTES = 16_384


@keras.saving.register_keras_serializable(package="zoo")
class TextClassifier(ClassifierModel):
    """A text classifier that takes raw strings: preprocessor, backbone, head.

    As keras-hub's tasks: `model.preprocessor` turns strings into token ids
    (`TextPreprocessor`, WordPiece on tensorflow-text ops), `model.backbone`
    turns ids into hidden states (`TextBackbone`, built from keras_selfattn
    layers), and the head pools them (masked mean, or the first token
    through the backbone's pooler) into class logits. `fit`, `evaluate` and
    `predict` take raw strings (lists, arrays or `tf.data`) with int or
    string labels; preprocessing runs in `tf.data` and, the same code, in
    the exported SavedModel.

    Build it from parts (fine-tuning), or give sizes for a new network whose
    vocabulary is learned from the training texts at the first `fit`:

        TextClassifier(backbone=TextEncoder.from_preset(name).backbone,
                       preprocessor=..., labels=["neg", "pos"])
        TextClassifier(labels=["neg", "pos"], sequence_length=64, num_layers=2)

    `TextClassifier.from_preset` loads a classifier preset, or puts a fresh
    head on a text body: a shipped one, a zoo preset folder, a keras-hub
    preset, or a Hugging Face BERT, DistilBERT or RoBERTa checkpoint.

    Args:
        backbone: a `TextBackbone` (or its config); None builds one from
            the sizes below.
        preprocessor: a `TextPreprocessor` (or its config); None builds one
            from `vocabulary` and `sequence_length`.
        num_classes: number of classes; defaults to `len(labels)`.
        labels: class names, stored with the model and returned by the export.
        pooling: `"mean"` (masked mean of the hidden states) or `"first"`
            (the first token, through the backbone's pooler if it has one).
        dropout: before the head; for a new network, in the blocks too.
        vocabulary: WordPiece vocabulary of a new preprocessor (None: learned
            at the first `fit`, or by `adapt`).
        merges: byte-pair merges, with a preprocessor config that says
            `tokenizer="byte_pair"` (a preset's).
        vocabulary_size, sequence_length, hidden_dim, num_layers, num_heads,
            intermediate_dim, attention, window_size, global_tokens,
            embedding_norm, normalize_first, rematerialize: sizes of a new
            network (`FROM_SCRATCH_SIZES`);
            `sequence_length` also sets a new preprocessor's.

    Call arguments:
        token_ids: `(B, T)` int32 token ids from the preprocessor.
        training: whether dropout is active.

    Returns:
        `(B, num_classes)` float32 logits.

    Example:

    >>> model = TextClassifier(labels=["neg", "pos"], sequence_length=32, num_layers=1,
    ...                        hidden_dim=16, num_heads=2, intermediate_dim=32)
    >>> model.compile()
    >>> _ = model.fit(["good", "bad"] * 8, ["pos", "neg"] * 8, epochs=1, verbose=0)
    >>> model.predict(["good film"], verbose=0).shape
    (1, 2)
    """

    groups_by_length = True
    raw_input_spec = tf.TensorSpec((), tf.string)
    kind = KIND
    presets_dir = PRESETS_DIR
    backbone_cls = TextBackbone
    preprocessor_cls = TextPreprocessor
    adjustable = ("dropout", "num_classes", "sequence_length", "attention", "window_size",
                  "global_tokens", "pooling", "rematerialize")
    from_scratch_sizes = FROM_SCRATCH_SIZES
    body_overrides = {"dropout": FINE_TUNING_DROPOUT}

    def __init__(self, backbone=None, preprocessor=None, *, num_classes=None, labels=None,
                 pooling="mean", dropout=None, vocabulary=None, merges=None, **sizes):
        if pooling not in POOLINGS:
            raise ValueError(f"`pooling` must be one of {POOLINGS}. Received: pooling={pooling!r}")
        # What Keras's own config adds (`.keras` loading).
        keras_arguments = {k: sizes.pop(k) for k in KERAS_ARGUMENTS if k in sizes}
        unknown = set(sizes) - set(FROM_SCRATCH_SIZES)
        if unknown:
            raise TypeError(f"Unknown arguments {sorted(unknown)}; a new network takes "
                            f"{sorted(FROM_SCRATCH_SIZES)}.")
        if isinstance(backbone, TextBackbone) and sizes:
            raise ValueError(f"Give either a backbone or the sizes of a new one, not both. "
                             f"Received a backbone and {sorted(sizes)}.")
        super().__init__(num_classes, labels, **keras_arguments)
        new = {**FROM_SCRATCH_SIZES, **sizes}
        sequence_length = new.pop("sequence_length")
        backbone, preprocessor = bodies.body_parts(
            backbone, preprocessor, vocabulary, sequence_length, merges,
            dropout=0.1 if dropout is None else dropout, **new)
        if backbone.pooler is not None:
            # Trained only when read: mean pooling leaves it without gradients.
            backbone.pooler.trainable = pooling == "first"
        self.backbone = backbone
        # Plain attributes: the preprocessor holds no weights, and a learned
        # vocabulary replaces its tokenizer after the network is built.
        self._set_untracked(preprocessor=preprocessor)
        self.pooling = pooling
        self.dropout = backbone.dropout if dropout is None else dropout
        self.pool = keras.layers.GlobalAveragePooling1D(name="pooling")
        self.head_dropout = keras.layers.Dropout(self.dropout, name="head_dropout")
        self.head = keras.layers.Dense(self.num_classes, dtype="float32", name=HEAD_NAME)
        # Calling the network once creates every weight, so presets and
        # checkpoints load into a complete model.
        self(np.zeros((1, min(8, backbone.sequence_length)), "int32"))

    # Tokenization.

    @property
    def vocabulary(self):
        return self.preprocessor.vocabulary

    @property
    def tokenizer(self):
        return self.preprocessor.tokenizer

    @property
    def sequence_length(self):
        return self.preprocessor.sequence_length

    def adapt(self, texts):
        """Learns the WordPiece vocabulary from `texts`."""
        self.preprocessor.learn(self.raw_array(texts).tolist(), self.backbone.vocabulary_size)

    def preprocess(self, texts):
        """`(B,)` strings -> `(B, T)` int32 token ids (see `TextPreprocessor`)."""
        return self.preprocessor(texts, static_shapes=self.static_shapes)

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
        outputs = self.backbone(token_ids, training=training)
        if self.pooling == "first":
            pooled = outputs.get("pooled_output", outputs["sequence_output"][:, 0])
        else:
            pooled = self.pool(outputs["sequence_output"], mask=token_ids != 0)
        return self.head(self.head_dropout(pooled, training=training))

    def attention_maps(self, inputs, targets=None):
        ids = self.preprocess(tf.constant(self.raw_array(inputs)))
        mask = ids != 0
        weights, _ = attention_through(self.backbone.blocks, self.backbone.embed(ids), mask)
        mask = mask.numpy()
        return [(f"block {number}", np.asarray(w), mask[:, None, None, :], mask)
                for number, w in enumerate(weights, 1)]

    def attention_summary(self, inputs, targets=None):
        ids = self.preprocess(tf.constant(self.raw_array(inputs)))
        mask = ids != 0
        return summarize_attention_through(self.backbone.blocks, self.backbone.embed(ids), mask)

    def attention_tokens(self, inputs, targets=None):
        ids = self.preprocess(tf.constant(self.raw_array(inputs)[:1])).numpy()[0]
        return [self.vocabulary[int(i)] for i in ids if i != 0], None

    def attention_sample(self, inputs, targets=None):
        return self.text_of_about(inputs, 12), None

    # Configuration, presets and export.

    def get_config(self):
        return {**super().get_config(), "pooling": self.pooling, "dropout": self.dropout,
                "backbone": preset_config(self.backbone),
                "preprocessor": self.preprocessor.get_config()}

    def preset_assets(self):
        return bodies.preprocessor_assets(self.preprocessor)

    def write_assets(self):
        return {**super().write_assets(), **bodies.vocabulary_asset(self.preprocessor)}

    @classmethod
    def assets_from_preset(cls, loaded):
        return bodies.read_vocabulary(loaded)

    def use_assets(self, vocabulary, merges=None):
        self.preprocessor.set_vocabulary(vocabulary, merges)

    @classmethod
    def named_presets(cls):
        """The shipped classifier presets and the text bodies `from_preset`
        also takes by name (`zoo.text_transformer.bodies.named_bodies`)."""
        return {**shipped_presets(PRESETS_DIR), **bodies.named_bodies()}

    @classmethod
    def body_loaders(cls):
        return bodies.body_loaders()

    @classmethod
    def from_preset(cls, preset, sha256=None, **overrides):
        """Loads a classifier preset, or puts a fresh head on a text body.

        Args:
            preset: a shipped classifier preset (`presets`), a shipped or
                packaged body (`named_presets()`), a zoo preset folder, a
                keras-hub preset (folder or `kaggle://` handle) or a Hugging
                Face checkpoint (folder, cache snapshot or `hf://` handle).
            sha256: pins a zoo preset folder: the SHA-256 its
                `metadata.json` must have.
            **overrides: `num_classes` or `labels` (required for a body),
                and any of `adjustable`. A `sequence_length` other
                than the backbone's positions cuts them or tiles them end to
                end (`tiled_positions`); `attention` and `window_size` move
                between `"multi_head"` and `"local_window"`, which share
                their weights, and `global_tokens=1` gives `[CLS]` global
                attention (a Longformer-style reader of documents far longer
                than the checkpoint's positions); `rematerialize=True`
                recomputes each block's activations in the backward pass,
                which halves the memory of such long-document training;
                `dropout` defaults to `FINE_TUNING_DROPOUT` for a body.
        """
        return super().from_preset(preset, sha256, **overrides)

    @classmethod
    def from_body(cls, backbone, preprocessor, num_classes=None, labels=None, **overrides):
        """A classifier on a pretrained `backbone` and `preprocessor`, with the
        `overrides` applied and a fresh head."""
        pooling = overrides.pop("pooling", "mean")
        dropout = overrides.pop("dropout")
        sequence_length = overrides.pop("sequence_length", None)
        if sequence_length is not None:
            preprocessor = preprocessor.with_sequence_length(sequence_length)
            overrides["sequence_length"] = sequence_length
        backbone = backbone.with_changes(dropout=dropout, **overrides)
        return cls(backbone=backbone, preprocessor=preprocessor, num_classes=num_classes,
                   labels=labels, pooling=pooling, dropout=dropout)

    def export(self, folder, version=None, max_texts=None, max_text_bytes=None):
        """Exports a TF Serving SavedModel to `folder/<version>/`.

        Signature `serving_default`: `{"text": tf.string[None]}` ->
        `{"probabilities": float32[None, C], "label": tf.string[None],
        "label_id": int64[None]}`, tokenization inside the graph. Loads with
        `tensorflow` and `tensorflow_text` alone. A request of more than
        `max_texts` texts, or with a text of more than `max_text_bytes`
        bytes, gets an `InvalidArgumentError` naming the limit (fixed at
        export; by default `REQUEST_TOKEN_BUDGET // sequence_length` texts
        and `max(MIN_REQUEST_TEXT_BYTES, 8 * sequence_length)` bytes); an
        empty request gets empty outputs.
        """
        max_texts = max_texts or max(1, REQUEST_TOKEN_BUDGET // self.sequence_length)
        max_text_bytes = max_text_bytes or max(MIN_REQUEST_TEXT_BYTES, 8 * self.sequence_length)
        module = _TextClassifierServing(self.inference_copy(), max_texts, max_text_bytes)
        return export_saved_model(module, folder, traced_signatures({
            "serving_default": (module.serve, [tf.TensorSpec([None], tf.string, name="text")]),
        }), version)


class _TextClassifierServing(ClassifierServing):
    """What the SavedModel tracks: the network, the tokenizer, the labels."""

    def __init__(self, classifier, max_texts, max_text_bytes):
        if classifier.tokenizer is None:
            raise ValueError("The model has no vocabulary yet; fit or adapt it first.")
        super().__init__(classifier)
        self.tokenizer = classifier.tokenizer
        self.max_texts, self.max_text_bytes = int(max_texts), int(max_text_bytes)

    def serve(self, text):
        text = checked_texts(text, self.max_texts, self.max_text_bytes)
        return tf.cond(tf.size(text) > 0,
                       lambda: self.outputs(self.classifier.preprocess(text)),
                       lambda: self.empty_outputs())
