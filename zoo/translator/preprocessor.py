"""The translator's preprocessor: both tokenizers, pairs to model inputs, ids back to text."""

import tensorflow as tf

from keras_selfattn.layers.base_attention import check_int
from zoo.pipeline import learn_word_piece_vocabulary, text_array
from zoo.presets import asset_lines
from zoo.text_transformer.preprocessor import TextPreprocessor

RESERVED_TOKENS = ("[PAD]", "[UNK]", "[START]", "[END]")
PAD_ID, START_ID, END_ID = 0, 2, 3
SOURCE_VOCABULARY_FILE = "source_vocabulary.txt"
TARGET_VOCABULARY_FILE = "target_vocabulary.txt"
# WordPiece splits punctuation off words; joining tokens with spaces would
# leave "Open file ." and "( optional )".
_DETOKENIZED_SPACING = (
    (r" ([.,;:!?%)\]}»“])", r"\1"),
    (r"([(\[{«„]) ", r"\1"),
    (r" ?([-/'’]) ?", r"\1"),
)


def learn_vocabularies(source_texts, target_texts, size, shared):
    """`(source, target)` WordPiece vocabularies of at most `size` tokens,
    the same one twice when `shared`. Case and accents are kept: they carry
    meaning in translations."""
    sources, targets = text_array(source_texts).tolist(), text_array(target_texts).tolist()

    def learn(texts):
        return learn_word_piece_vocabulary(texts, size, RESERVED_TOKENS, lowercase=False)

    if shared:
        vocabulary = learn(sources + targets)
        return vocabulary, vocabulary
    return learn(sources), learn(targets)


class TranslatorPreprocessor:
    """Source and target WordPiece tokenizers of a translator, on TF ops.

    Each side is the text architecture's `TextPreprocessor` (keras-hub's
    WordPiece tokenizer on tensorflow-text ops), with case and accents kept.
    The source gets `[END]`; the decoder reads `[START] target` and learns
    `target [END]` (teacher forcing).

    Args:
        source_vocabulary, target_vocabulary: WordPiece vocabularies
            starting with `[PAD] [UNK] [START] [END]`; None until learned
            (`learn`) or loaded.
        source_sequence_length: source tokens, `[END]` included; longer
            sources are truncated.
        target_sequence_length: target tokens, `[END]` included.
        shared_vocabulary: one vocabulary for both sides.
        max_vocabulary_size: the most tokens a vocabulary may hold (the
            backbone's embedding rows).

    Example:

    >>> preprocessor = TranslatorPreprocessor(
    ...     ["[PAD]", "[UNK]", "[START]", "[END]", "good", "day"],
    ...     ["[PAD]", "[UNK]", "[START]", "[END]", "guten", "Tag"],
    ...     source_sequence_length=4, target_sequence_length=4)
    >>> preprocessor.source_ids(tf.constant(["good day"])).numpy().tolist()
    [[4, 5, 3]]
    """

    def __init__(self, source_vocabulary=None, target_vocabulary=None, *,
                 source_sequence_length=40, target_sequence_length=40, shared_vocabulary=False,
                 max_vocabulary_size=None):
        check_int("source_sequence_length", source_sequence_length, minimum=2)
        check_int("target_sequence_length", target_sequence_length, minimum=2)
        self.source_sequence_length = source_sequence_length
        self.target_sequence_length = target_sequence_length
        self.shared_vocabulary = shared_vocabulary
        self.max_vocabulary_size = max_vocabulary_size
        self.source = self.target = None
        if source_vocabulary is not None or target_vocabulary is not None:
            self.set_vocabularies(source_vocabulary, target_vocabulary)

    def set_vocabularies(self, source_vocabulary, target_vocabulary=None):
        """Sets both vocabularies (the same one when `target_vocabulary` is None
        and the vocabulary is shared)."""
        if target_vocabulary is None and self.shared_vocabulary:
            target_vocabulary = source_vocabulary
        sides = {}
        for side, vocabulary, length in (
                ("source", source_vocabulary, self.source_sequence_length),
                ("target", target_vocabulary, self.target_sequence_length)):
            if vocabulary is None:
                raise ValueError(f"Give both vocabularies. Received: {side}_vocabulary=None")
            vocabulary = list(vocabulary)
            # Decoding starts from and stops at fixed ids.
            if tuple(vocabulary[:len(RESERVED_TOKENS)]) != RESERVED_TOKENS:
                raise ValueError(
                    f"The {side} vocabulary must start with {list(RESERVED_TOKENS)}. "
                    f"Received: {vocabulary[:4]}")
            if self.max_vocabulary_size is not None and \
                    len(vocabulary) > self.max_vocabulary_size:
                raise ValueError(
                    f"The {side} vocabulary has {len(vocabulary)} tokens, more than "
                    f"vocabulary_size={self.max_vocabulary_size}.")
            sides[side] = TextPreprocessor(
                vocabulary, sequence_length=length, lowercase=False, strip_accents=False,
                pad_token=RESERVED_TOKENS[PAD_ID], unknown_token=RESERVED_TOKENS[1],
                start_token=RESERVED_TOKENS[START_ID], end_token=RESERVED_TOKENS[END_ID])
        self.source, self.target = sides["source"], sides["target"]

    def learn(self, source_texts, target_texts, size):
        """Learns both vocabularies from training pairs, at most `size` tokens each."""
        self.set_vocabularies(*learn_vocabularies(source_texts, target_texts, size,
                                                  self.shared_vocabulary))

    @property
    def source_vocabulary(self):
        return self.source and self.source.vocabulary

    @property
    def target_vocabulary(self):
        return self.target and self.target.vocabulary

    def check_vocabularies(self):
        if self.source is None:
            raise ValueError(
                "The model has no vocabularies yet: call `fit` (which learns "
                "them from the training pairs), `adapt`, or load a preset.")

    def source_ids(self, texts, static_shape=False):
        """`(B,)` source strings -> `(B, S)` token ids, `S <= source_sequence_length`,
        `[END]` last, padded to the longest in the batch (to
        `source_sequence_length` with `static_shape`); longer sources are
        truncated. Invalid UTF-8 is replaced by U+FFFD."""
        tokens = self.source.tokenize(texts)[:, :self.source_sequence_length - 1]
        ends = tf.fill([tokens.nrows(), 1], END_ID)
        # Padded to the batch's longest, not to `source_sequence_length`:
        # interface messages are short, and a step costs what it holds.
        return tf.concat([tokens, ends], axis=1).to_tensor(
            PAD_ID, shape=[None, self.source_sequence_length] if static_shape else None)

    def pair(self, sources, targets, static_shape=False):
        """Raw pairs -> `({"encoder_token_ids", "decoder_token_ids"},
        next-token targets, weights that are 0 on padding)`."""
        tokens = self.target.tokenize(targets)[:, :self.target_sequence_length - 1]
        rows = tokens.nrows()
        decoder_in = tf.concat([tf.fill([rows, 1], START_ID), tokens], axis=1)
        decoder_out = tf.concat([tokens, tf.fill([rows, 1], END_ID)], axis=1)
        shape = [None, self.target_sequence_length] if static_shape else None
        decoder_in = decoder_in.to_tensor(PAD_ID, shape=shape)
        decoder_out = decoder_out.to_tensor(PAD_ID, shape=shape)
        inputs = {"encoder_token_ids": self.source_ids(sources, static_shape),
                  "decoder_token_ids": decoder_in}
        return inputs, decoder_out, tf.cast(decoder_out != PAD_ID, tf.float32)

    def detokenize(self, target_ids):
        """`(B, L)` ids (ended by `[END]`) -> `(B,)` readable strings."""
        ended = tf.cumsum(tf.cast(target_ids == END_ID, tf.int32), axis=1) > 0
        lengths = tf.reduce_sum(tf.cast(~ended, tf.int32), axis=1)
        words = tf.RaggedTensor.from_tensor(target_ids, lengths=lengths)
        # No [PAD]/[UNK]/[START]; and no id past the learned vocabulary (the
        # output layer has `vocabulary_size` of them, the vocabulary may be
        # smaller), on which the WordPiece detokenizer crashes the process.
        known = (words > END_ID) & (words < len(self.target_vocabulary))
        words = tf.ragged.boolean_mask(words, known)
        text = self.target.tokenizer.detokenize(words)
        for pattern, rewrite in _DETOKENIZED_SPACING:
            text = tf.strings.regex_replace(text, pattern, rewrite)
        return tf.strings.strip(text)

    # Presets: the configuration, and the vocabularies as assets.

    def get_config(self):
        return {"source_sequence_length": self.source_sequence_length,
                "target_sequence_length": self.target_sequence_length,
                "shared_vocabulary": self.shared_vocabulary}

    def assets(self):
        """`{"source_vocabulary", "target_vocabulary"}`: what a preset keeps as files."""
        return {"source_vocabulary": self.source_vocabulary,
                "target_vocabulary": self.target_vocabulary}

    def asset_files(self):
        """`{file name: text}` of both vocabularies."""
        self.check_vocabularies()
        return {SOURCE_VOCABULARY_FILE: "\n".join(self.source_vocabulary) + "\n",
                TARGET_VOCABULARY_FILE: "\n".join(self.target_vocabulary) + "\n"}

    @staticmethod
    def assets_from_preset(loaded):
        return {"source_vocabulary": asset_lines(loaded, SOURCE_VOCABULARY_FILE),
                "target_vocabulary": asset_lines(loaded, TARGET_VOCABULARY_FILE)}
