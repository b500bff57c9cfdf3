"""What the text classifier and the pretrained text encoder share.

`TextBody` holds the WordPiece tokenizer (keras-hub, on tensorflow-text
ops) and the network both are built on: `TokenAndPositionEmbedding` then
`num_layers` `TransformerEncoderBlock`s. Its layers are named `embedding`
and `encoder_<i>` in both, so a body pretrained as a `TextEncoder` moves
into a `TextClassifier` layer by layer name.
"""

import keras
import keras_hub

import keras_selfattn as ksa
from zoo.pipeline import learn_word_piece_vocabulary

RESERVED_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")
VOCABULARY_FILE = "vocabulary.txt"
# The constructor arguments that shape the body (and its weights, except
# `dropout`, `attention` and `window_size`).
BODY_ARGUMENTS = ("vocabulary_size", "sequence_length", "hidden_dim", "num_layers",
                  "num_heads", "intermediate_dim", "attention", "window_size", "dropout",
                  "embedding_norm", "normalize_first")


class TextBody:
    """Mixin of `TextClassifier` and `TextEncoder`: tokenizer and body."""

    reserved_tokens = RESERVED_TOKENS

    def build_body(self, vocabulary_size, sequence_length, hidden_dim, num_layers,
                   num_heads, intermediate_dim, attention, window_size, dropout,
                   embedding_norm=False, normalize_first=False):
        for name, value in (("vocabulary_size", vocabulary_size),
                            ("sequence_length", sequence_length)):
            if not isinstance(value, int) or value < 8:
                raise ValueError(f"`{name}` must be an int >= 8. Received: {name}={value!r}")
        arguments = locals()
        for name in BODY_ARGUMENTS:
            setattr(self, name, arguments[name])
        self.embedding = ksa.TokenAndPositionEmbedding(
            vocabulary_size, sequence_length, hidden_dim, mask_zero=True,
            name="embedding",
        )
        # As in BERT: embeddings are initialized small, so without a norm the
        # first block's queries and keys are tiny, its attention stays uniform
        # and learns slowly (seen in the attention statistics).
        self.embedding_normalization = (
            keras.layers.LayerNormalization(epsilon=1e-5, name="embedding_norm")
            if embedding_norm else None
        )
        self.blocks = [
            ksa.TransformerEncoderBlock(
                num_heads, intermediate_dim, attention=attention,
                window_size=window_size, dropout=dropout,
                attention_dropout=dropout, normalize_first=normalize_first,
                name=f"encoder_{i}",
            )
            for i in range(num_layers)
        ]
        # Pre-norm blocks leave their residual stream unnormalized.
        self.final_normalization = (
            keras.layers.LayerNormalization(epsilon=1e-5, name="final_norm")
            if normalize_first else None
        )
        self._set_untracked(tokenizer=None, vocabulary=None)

    def body_architecture(self):
        return {name: getattr(self, name) for name in BODY_ARGUMENTS}

    def embed(self, token_ids):
        """`(B, T)` token ids -> the first block's input `(B, T, hidden_dim)`."""
        x = self.embedding(token_ids)
        if self.embedding_normalization is not None:
            x = self.embedding_normalization(x)
        return x

    def encode(self, token_ids, training=None):
        """`(B, T)` token ids -> `(B, T, hidden_dim)`, padding (id 0) masked."""
        x = self.embed(token_ids)
        for block in self.blocks:
            x = block(x, training=training)
        if self.final_normalization is not None:
            x = self.final_normalization(x)
        return x

    # Tokenization.

    def set_vocabulary(self, vocabulary):
        vocabulary = list(vocabulary)
        reserved = RESERVED_TOKENS
        if tuple(vocabulary[:len(reserved)]) != reserved:
            raise ValueError(
                f"The vocabulary must start with {list(reserved)}. "
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
                # The TF path everywhere, eager included: ragged tensors out.
                _allow_python_workflow=False,
            ),
            start_id=vocabulary.index("[CLS]"),
            end_id=vocabulary.index("[SEP]"),
            graph_functions={},
        )

    def learn_vocabulary(self, texts):
        """Learns the WordPiece vocabulary from `texts` (strings)."""
        self.set_vocabulary(learn_word_piece_vocabulary(
            list(texts), self.vocabulary_size, self.reserved_tokens, lowercase=True,
        ))

    def check_vocabulary(self):
        if self.tokenizer is None:
            raise ValueError(
                "The model has no vocabulary yet: call `fit` (which learns "
                "one from the training texts), `adapt`, or load a preset."
            )

    # Presets.

    def preset_assets(self):
        return {"vocabulary": self.vocabulary}

    def vocabulary_asset(self):
        if self.tokenizer is None:
            raise ValueError("The model has no vocabulary yet; fit or adapt it first.")
        return {VOCABULARY_FILE: "\n".join(self.vocabulary) + "\n"}

    @classmethod
    def assets_from_preset(cls, loaded):
        return {"vocabulary": loaded.asset(VOCABULARY_FILE)
                .read_text(encoding="utf-8").splitlines()}


def tiled_positions(embeddings, length):
    """Position embeddings `(T, D)` -> `(length, D)`: cut when shorter;
    when longer, the learned table copied end to end (as Longformer
    extended RoBERTa's 512 positions), so every position keeps a trained
    vector and each window of the original length looks like training."""
    rows = embeddings.shape[0]
    if length <= rows:
        return embeddings[:length]
    repeats = -(-length // rows)
    return keras.ops.tile(embeddings, (repeats, 1))[:length]
