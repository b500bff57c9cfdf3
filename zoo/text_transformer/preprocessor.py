"""The text preprocessor: strings to token ids, in tensorflow-text ops."""

import functools

import keras_hub
import tensorflow as tf

from keras_selfattn.layers.base_attention import check_int
from zoo.keras_compat import graph_tokenizer
from zoo.pipeline import learn_word_piece_vocabulary, traced_on_strings, valid_utf8

# The tokens a learned vocabulary starts with; a checkpoint's are found by name.
RESERVED_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")
SPECIAL_TOKEN_ARGUMENTS = ("pad_token", "unknown_token", "start_token", "end_token")
TOKENIZERS = ("word_piece", "byte_pair")


class TextPreprocessor:
    """Raw strings -> `(B, T)` int32 token ids for a `TextBackbone`.

    WordPiece tokenization by keras-hub's `WordPieceTokenizer`, or byte-level
    byte-pair encoding by its `BytePairTokenizer` (RoBERTa's), on TensorFlow
    and tensorflow-text ops (so the exported SavedModel tokenizes too), then
    `start_token ... end_token`, truncated to `sequence_length` and padded
    with the padding token's id, which must be 0 (the backbone masks id 0;
    `zoo.text_transformer.convert` reorders a checkpoint's vocabulary when
    its padding token is elsewhere). Special tokens are found by name:
    BERT's `[CLS]` is id 101.

    Each batch is padded to its longest text, rounded up to a multiple of
    8 (few distinct shapes for XLA), not to `sequence_length`: padding is
    masked, so predictions do not change, and a step costs what its texts
    hold. With `static_shapes` (a TPU) every batch has `sequence_length`.

    Args:
        vocabulary: the vocabulary (a list of tokens, in id order), or None
            until `learn` is called.
        sequence_length: tokens per text, start and end tokens included.
        lowercase: lowercase the text first.
        strip_accents: remove accents; defaults to `lowercase` (as BERT's
            uncased tokenizer does).
        pad_token, unknown_token, start_token, end_token: special tokens.
        tokenizer: `"word_piece"` or `"byte_pair"` (which needs `merges`
            and ignores `lowercase` and `strip_accents`).
        merges: the byte-pair merge rules, `"a b"` strings by rank.

    Call arguments:
        texts: `(B,)` tf.string tensor, or a list of strings.
        static_shapes: pad to `sequence_length` whatever the texts.

    Returns:
        `(B, T)` int32 token ids, `T <= sequence_length`.

    Example:

    >>> preprocessor = TextPreprocessor(
    ...     ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "good", "film"], sequence_length=8)
    >>> preprocessor(["Good film"]).numpy()
    array([[2, 4, 5, 3, 0, 0, 0, 0]], dtype=int32)
    """

    def __init__(self, vocabulary=None, sequence_length=128, lowercase=True, strip_accents=None,
                 pad_token="[PAD]", unknown_token="[UNK]", start_token="[CLS]",
                 end_token="[SEP]", tokenizer="word_piece", merges=None):
        check_int("sequence_length", sequence_length, minimum=3,
                  reason=" (start, a token, end)")
        if tokenizer not in TOKENIZERS:
            raise ValueError(f"`tokenizer` must be one of {TOKENIZERS}. "
                             f"Received: tokenizer={tokenizer!r}")
        self.sequence_length = sequence_length
        self.kind = tokenizer
        self.lowercase = bool(lowercase)
        self.strip_accents = self.lowercase if strip_accents is None else bool(strip_accents)
        self.pad_token = pad_token
        self.unknown_token = unknown_token
        self.start_token = start_token
        self.end_token = end_token
        self.vocabulary = None
        self.merges = None
        self.tokenizer = None
        self._graph_functions = {}  # the traced tokenization of this vocabulary
        if vocabulary is not None:
            self.set_vocabulary(vocabulary, merges)

    def set_vocabulary(self, vocabulary, merges=None):
        vocabulary = [str(token) for token in vocabulary]
        if not vocabulary:
            raise ValueError("The vocabulary is empty.")
        if len(set(vocabulary)) != len(vocabulary):
            raise ValueError("The vocabulary repeats tokens; each token needs one id.")
        missing = [getattr(self, name) for name in SPECIAL_TOKEN_ARGUMENTS
                   if getattr(self, name) not in vocabulary]
        if missing:
            raise ValueError(f"The vocabulary lacks the special tokens {missing}. Received a "
                             f"vocabulary of {len(vocabulary)} tokens starting {vocabulary[:5]}.")
        if vocabulary.index(self.pad_token) != 0:
            raise ValueError(f"The padding token {self.pad_token!r} must be id 0 (the backbone masks "
                             f"id 0). Received it at id {vocabulary.index(self.pad_token)}.")
        if (self.kind == "byte_pair") != (merges is not None):
            raise ValueError(f"A {self.kind} tokenizer takes merges only with byte_pair. "
                             f"Received {'no' if merges is None else len(merges)} merges.")
        self.vocabulary = vocabulary
        self.merges = None if merges is None else [str(merge) for merge in merges]
        # The TensorFlow ops everywhere, eager included (see
        # zoo.keras_compat.graph_tokenizer).
        if self.kind == "byte_pair":
            self.tokenizer = graph_tokenizer(
                keras_hub.tokenizers.BytePairTokenizer,
                vocabulary={token: i for i, token in enumerate(vocabulary)},
                merges=self.merges, dtype="int32",
                unsplittable_tokens=[getattr(self, name) for name in SPECIAL_TOKEN_ARGUMENTS])
        else:
            self.tokenizer = graph_tokenizer(
                keras_hub.tokenizers.WordPieceTokenizer,
                vocabulary=vocabulary, lowercase=self.lowercase,
                strip_accents=self.strip_accents, oov_token=self.unknown_token, dtype="int32")
        self.start_id = vocabulary.index(self.start_token)
        self.end_id = vocabulary.index(self.end_token)
        self._graph_functions = {}

    def learn(self, texts, vocabulary_size, reserved_tokens=RESERVED_TOKENS):
        """Learns a WordPiece vocabulary of at most `vocabulary_size` tokens
        from `texts` (strings), `reserved_tokens` first."""
        if self.kind != "word_piece":
            raise ValueError("Only a WordPiece vocabulary is learned from texts; a byte-pair "
                             "one comes with its checkpoint.")
        self.set_vocabulary(learn_word_piece_vocabulary(
            list(texts), vocabulary_size, reserved_tokens, lowercase=self.lowercase))

    def check_vocabulary(self):
        if self.tokenizer is None:
            raise ValueError(
                "The model has no vocabulary yet: call `fit` (which learns "
                "one from the training texts), `adapt`, or load a preset."
            )

    def tokenize(self, texts):
        """`(B,)` strings -> ragged `(B, None)` WordPiece ids, no start or end token."""
        self.check_vocabulary()
        return traced_on_strings(self._graph_functions, ("_tokens",), self._tokens, texts)

    def __call__(self, texts, static_shapes=False):
        self.check_vocabulary()
        static_shapes = bool(static_shapes)
        return traced_on_strings(
            self._graph_functions, ("_token_ids", static_shapes),
            functools.partial(self._token_ids, static_shapes=static_shapes), texts)

    def _tokens(self, texts):
        return self.tokenizer(valid_utf8(texts))

    def _token_ids(self, texts, static_shapes):
        tokens = self._tokens(texts)[:, :self.sequence_length - 2]
        rows = tokens.nrows()
        ids = tf.concat([tf.fill([rows, 1], self.start_id), tokens,
                         tf.fill([rows, 1], self.end_id)], axis=1)
        longest = tf.cast(tf.reduce_max(ids.row_lengths()), tf.int32)
        length = tf.minimum((longest + 7) // 8 * 8, self.sequence_length)
        if static_shapes:
            length = self.sequence_length
        return ids.to_tensor(0, shape=tf.stack([rows, tf.cast(length, rows.dtype)]))

    def with_sequence_length(self, sequence_length):
        """This preprocessor with another `sequence_length`."""
        if sequence_length == self.sequence_length:
            return self
        return type(self)(vocabulary=self.vocabulary, merges=self.merges,
                          **{**self.get_config(), "sequence_length": sequence_length})

    def get_config(self):
        """Everything but the vocabulary and merges, which presets keep as assets."""
        return {
            "tokenizer": self.kind,
            "sequence_length": self.sequence_length,
            "lowercase": self.lowercase,
            "strip_accents": self.strip_accents,
            **{name: getattr(self, name) for name in SPECIAL_TOKEN_ARGUMENTS},
        }
