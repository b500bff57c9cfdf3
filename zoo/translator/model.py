"""Sequence-to-sequence translator: source strings in, target strings out."""

import functools
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

import keras_selfattn as ksa
from keras_selfattn.layers.base_attention import check_int
from zoo import report as reports
from zoo.backbone import attention_through
from zoo.export import checked_texts, export_saved_model
from zoo.pipeline import (
    RawInputModel,
    learn_word_piece_vocabulary,
    text_array,
)
from zoo.preset_model import PresetModel
from zoo.presets import asset_lines
from zoo.text_classifier.preprocessor import TextPreprocessor
from zoo.translator.decoding import beam_search

KIND = "translator"
RESERVED_TOKENS = ("[PAD]", "[UNK]", "[START]", "[END]")
PAD_ID, START_ID, END_ID = 0, 2, 3
PRESETS_DIR = Path(__file__).resolve().parent / "presets"
SOURCE_VOCABULARY_FILE = "source_vocabulary.txt"
TARGET_VOCABULARY_FILE = "target_vocabulary.txt"
# WordPiece splits punctuation off words; joining tokens with spaces would
# leave "Open file ." and "( optional )".
_DETOKENIZED_SPACING = (
    (r" ([.,;:!?%)\]}»“])", r"\1"),
    (r"([(\[{«„]) ", r"\1"),
    (r" ?([-/'’]) ?", r"\1"),
)


# What one request to the exported translator may hold by default (`export`):
# 64 sentences of up to 16 KB, each cut to the model's source length and
# decoded by beam search (`bench/RESULTS.md`, "Serving limits").
MAX_REQUEST_TEXTS = 64
MAX_REQUEST_TEXT_BYTES = 16_384

@keras.saving.register_keras_serializable(package="zoo")
class TiedOutputProjection(keras.layers.Layer):
    """Logits from the target embedding matrix (transposed) plus a bias.

    Call arguments:
        inputs: `(B, T, dim)` decoder outputs.
        embeddings: `(vocabulary_size, dim)` the target token embeddings.

    Returns:
        `(B, T, vocabulary_size)` float32 logits.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        # The logits at padding positions are weighted out of the loss; the
        # decoder's padding mask does not travel on to them.
        self.supports_masking = True

    def build(self, inputs_shape, embeddings_shape):
        self.bias = self.add_weight(
            name="bias", shape=(embeddings_shape[0],), initializer="zeros"
        )

    def call(self, inputs, embeddings):
        logits = keras.ops.matmul(inputs, keras.ops.transpose(embeddings))
        return keras.ops.cast(logits, "float32") + keras.ops.cast(self.bias, "float32")

    def compute_mask(self, inputs, embeddings, mask=None):
        return None

    def compute_output_shape(self, inputs_shape, embeddings_shape):
        return tuple(inputs_shape[:-1]) + (embeddings_shape[0],)


@keras.saving.register_keras_serializable(package="zoo")
class SmoothedSequenceCrossEntropy(keras.losses.Loss):
    """Token cross-entropy with label smoothing, averaged over real tokens.

    The dataset gives each target token a sample weight of 1 and each
    padding position 0; the `"mean_with_sample_weight"` reduction divides by
    their sum, so padding neither adds loss nor dilutes it.

    Args:
        label_smoothing: the probability mass spread evenly over the
            vocabulary (0 gives plain cross-entropy).
    """

    def __init__(self, label_smoothing=0.1, name="smoothed_sequence_cross_entropy", **kwargs):
        super().__init__(name=name, reduction="mean_with_sample_weight", **kwargs)
        self.label_smoothing = label_smoothing

    def __call__(self, y_true, y_pred, sample_weight=None):
        context = tf.distribute.get_replica_context()
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        if sample_weight is None or context is None or replicas == 1:
            return super().__call__(y_true, y_pred, sample_weight)
        # Under several replicas each one's mean over its own tokens would
        # weigh a token by how many tokens its replica happened to get: each
        # replica returns its tokens' share of the mean over the global
        # batch's tokens, so the summed gradients are one device's. (Keras's
        # own reduction would divide by the replica count here instead, and
        # its loss tracker multiplies back.)
        weights = keras.ops.cast(sample_weight, "float32")
        total = keras.ops.sum(self.call(y_true, y_pred) * weights)
        tokens = context.all_reduce("SUM", keras.ops.sum(weights))
        return total / keras.ops.maximum(tokens, 1.0)

    def call(self, y_true, y_pred):
        # With log p = z - logsumexp(z): -(1 - e) log p[target] - e mean(log p)
        # = logsumexp(z) - (1 - e) z[target] - e mean(z), which never
        # materializes the (B, T, V) log-probabilities.
        logits = keras.ops.cast(y_pred, "float32")
        targets = keras.ops.expand_dims(keras.ops.cast(y_true, "int32"), -1)
        target_logits = keras.ops.take_along_axis(logits, targets, axis=-1)[..., 0]
        return (keras.ops.logsumexp(logits, axis=-1)
                - (1.0 - self.label_smoothing) * target_logits
                - self.label_smoothing * keras.ops.mean(logits, axis=-1))

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


def _learn_vocabularies(source_texts, target_texts, size, shared):
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


@keras.saving.register_keras_serializable(package="zoo")
class Translator(PresetModel, RawInputModel):
    """A transformer encoder-decoder translator that takes and returns strings.

    Source and target texts are tokenized with WordPiece tokenizers
    (keras-hub, on tensorflow-text ops; case and accents kept). The source
    gets an `[END]` token; the decoder sees `[START] target` and learns
    `target [END]` (teacher forcing). `TokenAndPositionEmbedding` ->
    `num_encoder_layers` `TransformerEncoderBlock`s (attention chosen by
    name) -> `num_decoder_layers` `TransformerDecoderBlock`s (causal
    self-attention, cross-attention) -> output projection, tied to the
    target embedding or not. `fit(source_texts, target_texts)` trains with
    padding masked out of the loss and label smoothing; `translate` decodes
    with a key/value cache and beam search in one `tf.function`; `export`
    writes a SavedModel that maps strings to strings.

    Args:
        source_vocabulary, target_vocabulary: WordPiece vocabularies (lists
            starting with `[PAD] [UNK] [START] [END]`); when `None` they are
            learned from the training pairs at the first `fit` (or `adapt`).
        shared_vocabulary: learn one vocabulary from both sides.
        vocabulary_size: rows of each embedding and of the output layer,
            and the most tokens a learned vocabulary may hold
            (`from_training_pairs` sets it to what the vocabularies hold).
        source_sequence_length: source tokens, `[END]` included; longer
            sources are truncated.
        target_sequence_length: target tokens, `[END]` included: the
            longest translation.
        hidden_dim, num_encoder_layers, num_decoder_layers, num_heads,
        intermediate_dim, dropout: sizes and regularization.
        attention: the encoder's attention: `"multi_head"`,
            `"local_window"`, `"additive"` or `"self_attention"`.
        window_size: band half-width for `"local_window"`.
        tie_embeddings: project to the target vocabulary with the target
            embedding matrix.
        label_smoothing: for the default loss of `compile`.

    Example:

    >>> model = Translator(hidden_dim=32, intermediate_dim=64,
    ...                    source_sequence_length=8, target_sequence_length=8)
    >>> model.compile()
    >>> model.fit(["good day"] * 16, ["guten Tag"] * 16, epochs=1, verbose=0)
    >>> model.translate(["good day"])  # a list with one string
    """

    # Random batches of interface messages are padded to about 5x their
    # mean length; grouped by length, an epoch took 14 s instead of 41.
    groups_by_length = True

    raw_input_spec = tf.TensorSpec((), tf.string)
    kind = KIND
    presets_dir = PRESETS_DIR
    adjustable_at_load = ("dropout", "label_smoothing")

    def __init__(self, source_vocabulary=None, target_vocabulary=None,
                 shared_vocabulary=False, vocabulary_size=4000,
                 source_sequence_length=40, target_sequence_length=40,
                 hidden_dim=128, num_encoder_layers=2, num_decoder_layers=2,
                 num_heads=4, intermediate_dim=512, attention="multi_head",
                 window_size=None, dropout=0.1, tie_embeddings=True,
                 label_smoothing=0.1, **kwargs):
        for name, value in (("vocabulary_size", vocabulary_size),
                            ("source_sequence_length", source_sequence_length),
                            ("target_sequence_length", target_sequence_length)):
            check_int(name, value, minimum=2)
        check_int("num_encoder_layers", num_encoder_layers)
        check_int("num_decoder_layers", num_decoder_layers)
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(
                f"`label_smoothing` must lie in [0, 1). Received: label_smoothing={label_smoothing!r}"
            )
        super().__init__(**kwargs)
        self.shared_vocabulary = shared_vocabulary
        self.vocabulary_size = vocabulary_size
        self.source_sequence_length = source_sequence_length
        self.target_sequence_length = target_sequence_length
        self.hidden_dim = hidden_dim
        self.num_encoder_layers = num_encoder_layers
        self.num_decoder_layers = num_decoder_layers
        self.num_heads = num_heads
        self.intermediate_dim = intermediate_dim
        self.attention = attention
        self.window_size = window_size
        self.dropout = dropout
        self.tie_embeddings = tie_embeddings
        self.label_smoothing = label_smoothing

        self.source_embedding = ksa.TokenAndPositionEmbedding(
            vocabulary_size, source_sequence_length, hidden_dim, mask_zero=True,
            name="source_embedding",
        )
        self.target_embedding = ksa.TokenAndPositionEmbedding(
            vocabulary_size, target_sequence_length, hidden_dim, mask_zero=True,
            name="target_embedding",
        )
        self.embedding_dropout = keras.layers.Dropout(dropout, name="embedding_dropout")
        self.encoder_blocks = [
            ksa.TransformerEncoderBlock(
                num_heads, intermediate_dim, attention=attention,
                window_size=window_size, dropout=dropout, name=f"encoder_{i}",
            )
            for i in range(num_encoder_layers)
        ]
        self.decoder_blocks = [
            ksa.TransformerDecoderBlock(
                num_heads, intermediate_dim, dropout=dropout, name=f"decoder_{i}",
            )
            for i in range(num_decoder_layers)
        ]
        if tie_embeddings:
            self.output_projection = TiedOutputProjection(name="output_projection")
        else:
            self.output_projection = keras.layers.Dense(
                vocabulary_size, dtype="float32", name="output_projection"
            )
        self._set_untracked(source_preprocessor=None, target_preprocessor=None,
                            graph_functions={})
        if source_vocabulary is not None or target_vocabulary is not None:
            self.set_vocabularies(source_vocabulary, target_vocabulary)
        # Calling the network once creates every weight, so presets and
        # checkpoints load into a complete model.
        self({"encoder_token_ids": np.ones((1, source_sequence_length), "int32"),
              "decoder_token_ids": np.ones((1, target_sequence_length), "int32")})

    # Tokenization.

    def set_vocabularies(self, source_vocabulary, target_vocabulary=None):
        """Sets both vocabularies (the same one when `target_vocabulary` is None
        and the vocabulary is shared)."""
        if target_vocabulary is None and self.shared_vocabulary:
            target_vocabulary = source_vocabulary
        preprocessors = {}
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
                    f"Received: {vocabulary[:4]}"
                )
            if len(vocabulary) > self.vocabulary_size:
                raise ValueError(
                    f"The {side} vocabulary has {len(vocabulary)} tokens, more than "
                    f"vocabulary_size={self.vocabulary_size}."
                )
            # The classifiers' WordPiece preprocessor; case and accents kept:
            # they carry meaning in translations.
            preprocessors[side] = TextPreprocessor(
                vocabulary, sequence_length=length, lowercase=False, strip_accents=False,
                pad_token=RESERVED_TOKENS[PAD_ID], unknown_token=RESERVED_TOKENS[1],
                start_token=RESERVED_TOKENS[START_ID], end_token=RESERVED_TOKENS[END_ID])
        self._set_untracked(source_preprocessor=preprocessors["source"],
                            target_preprocessor=preprocessors["target"], graph_functions={})

    @property
    def source_vocabulary(self):
        return self.source_preprocessor and self.source_preprocessor.vocabulary

    @property
    def target_vocabulary(self):
        return self.target_preprocessor and self.target_preprocessor.vocabulary

    @property
    def source_tokenizer(self):
        return self.source_preprocessor and self.source_preprocessor.tokenizer

    @property
    def target_tokenizer(self):
        return self.target_preprocessor and self.target_preprocessor.tokenizer

    @classmethod
    def from_training_pairs(cls, source_texts, target_texts, vocabulary_size=4000,
                            shared_vocabulary=False, **kwargs):
        """A translator with vocabularies learned from the pairs, its
        embeddings and output layer sized to them.

        `vocabulary_size` caps each learned vocabulary. A corpus often
        supports fewer tokens than the cap (the embedded Gramps messages
        about 800 of 4000), and `Translator(vocabulary_size=...)` followed
        by `fit` would keep a row for every capped id in the embeddings and
        in the output softmax, the largest matmul of training and decoding;
        here the model's `vocabulary_size` becomes the longer learned
        vocabulary's length. Other arguments are the constructor's.
        """
        vocabularies = _learn_vocabularies(source_texts, target_texts, vocabulary_size,
                                           shared_vocabulary)
        return cls(*vocabularies, shared_vocabulary=shared_vocabulary,
                   vocabulary_size=max(len(vocabulary) for vocabulary in vocabularies), **kwargs)

    def adapt(self, source_texts, target_texts):
        """Learns the WordPiece vocabularies from training pairs (at most
        `vocabulary_size` tokens each; `from_training_pairs` also sizes the
        model to them)."""
        self.set_vocabularies(*_learn_vocabularies(source_texts, target_texts,
                                                   self.vocabulary_size, self.shared_vocabulary))

    def _check_vocabularies(self):
        if self.source_tokenizer is None:
            raise ValueError(
                "The model has no vocabularies yet: call `fit` (which learns "
                "them from the training pairs), `adapt`, or load a preset."
            )

    def preprocess(self, texts):
        """`(B,)` source strings -> `(B, S)` token ids, `S <= source_sequence_length`,
        `[END]` last, padded to the longest in the batch; longer sources
        are truncated. Invalid UTF-8 is replaced by U+FFFD."""
        self._check_vocabularies()
        if tf.executing_eagerly():
            return self.in_graph(self.preprocess, texts)
        tokens = self.source_preprocessor.tokenize(texts)
        tokens = tokens[:, :self.source_sequence_length - 1]
        ends = tf.fill([tokens.nrows(), 1], END_ID)
        # Padded to the batch's longest, not to `source_sequence_length`:
        # interface messages are short, and a step costs what it holds.
        return tf.concat([tokens, ends], axis=1).to_tensor(
            PAD_ID, shape=[None, self.source_sequence_length] if self.static_shapes else None)

    def preprocess_pair(self, sources, targets):
        """Raw pairs -> `({"encoder_token_ids", "decoder_token_ids"},
        next-token targets, weights that are 0 on padding)`."""
        if tf.executing_eagerly():
            return self.in_graph(self.preprocess_pair, sources, targets)
        tokens = self.target_preprocessor.tokenize(targets)
        tokens = tokens[:, :self.target_sequence_length - 1]
        rows = tokens.nrows()
        decoder_in = tf.concat([tf.fill([rows, 1], START_ID), tokens], axis=1)
        decoder_out = tf.concat([tokens, tf.fill([rows, 1], END_ID)], axis=1)
        shape = [None, self.target_sequence_length] if self.static_shapes else None
        decoder_in = decoder_in.to_tensor(PAD_ID, shape=shape)
        decoder_out = decoder_out.to_tensor(PAD_ID, shape=shape)
        inputs = {"encoder_token_ids": self.preprocess(sources),
                  "decoder_token_ids": decoder_in}
        return inputs, decoder_out, tf.cast(decoder_out != PAD_ID, tf.float32)

    def targets(self, y):
        return self.raw_array(y)

    def tf_targets(self, y):
        return y

    def raw_array(self, x):
        return text_array(x)

    def prepare_for_training(self, x, y):
        if self.source_tokenizer is None:
            if isinstance(x, tf.data.Dataset):
                raise ValueError(
                    "Learning vocabularies needs the texts: call "
                    "`adapt(source_texts, target_texts)` before fitting on a "
                    "tf.data.Dataset."
                )
            if y is None:
                raise ValueError("A translator trains on pairs: give the target texts as `y`.")
            self.adapt(x, y)

    # Token accuracy over real tokens: the pipeline's weights are 0 on padding.
    sample_weighted_metrics = True

    def default_loss(self):
        """Label-smoothed token cross-entropy over real tokens."""
        return SmoothedSequenceCrossEntropy(self.label_smoothing)

    # The network.

    @property
    def input_dtype(self):
        return "int32"

    def encode(self, source_ids, training=None):
        """`(B, S)` ids -> `(B, S, hidden_dim)` and the source padding mask."""
        source_mask = source_ids != PAD_ID
        x = self.embedding_dropout(self.source_embedding(source_ids), training=training)
        for block in self.encoder_blocks:
            x = block(x, padding_mask=source_mask, training=training)
        return x, source_mask

    def project(self, x):
        if self.tie_embeddings:
            return self.output_projection(x, self.target_embedding.token_embedding.embeddings)
        return self.output_projection(x)

    def decode(self, decoder_ids, encoded, source_mask, training=None):
        """Teacher-forced decoding: `(B, T)` ids -> `(B, T, V)` logits."""
        x = self.embedding_dropout(self.target_embedding(decoder_ids), training=training)
        for block in self.decoder_blocks:
            x = block(x, encoded, decoder_padding_mask=decoder_ids != PAD_ID,
                      encoder_padding_mask=source_mask, training=training)
        return self.project(x)

    def call(self, inputs, training=None):
        encoded, source_mask = self.encode(inputs["encoder_token_ids"], training)
        return self.decode(inputs["decoder_token_ids"], encoded, source_mask, training)

    # Decoding.

    def step_functions(self, encoded, source_mask, beam_size, max_length, use_cache=True):
        """`(initial state, step)` for `zoo.translator.decoding.beam_search`
        over the encoded sources, rows repeated per beam. The state is each
        decoder block's self-attention cache, `max_length` positions long;
        without `use_cache` there is none and each step recomputes the prefix."""
        encoded = tf.repeat(encoded, beam_size, axis=0)
        source_mask = tf.repeat(source_mask, beam_size, axis=0)
        rows = tf.shape(encoded)[0]
        if not use_cache:
            def recompute(tokens, index, state):
                # The whole prefix again at every step: what the cache saves.
                prefix = tokens[:, :index + 1]
                logits = self.decode(prefix, encoded, source_mask)[:, -1]
                return tf.nn.log_softmax(logits), state

            return (), recompute

        cross_caches = ksa.TransformerDecoderBlock.cross_attention_caches(
            self.decoder_blocks, encoded)
        state = [block.empty_self_attention_cache(rows, max_length)
                 for block in self.decoder_blocks]

        def cached(tokens, index, caches):
            # Indexed, not sliced, so the one-token length is known while
            # tracing and the attention skips the causal mask.
            token = tokens[:, index][:, None]
            x = self.target_embedding(token, start_index=index)
            updated = []
            for block, cache, cross in zip(self.decoder_blocks, caches, cross_caches):
                x, cache, _ = block(
                    x, encoder_padding_mask=source_mask, self_attention_cache=cache,
                    self_attention_cache_update_index=index,
                    cross_attention_cache=cross,
                )
                updated.append(cache)
            return tf.nn.log_softmax(self.project(x)[:, 0]), updated

        return state, cached

    def decode_ids(self, source_ids, beam_size=1, max_length=None, length_penalty=0.6,
                   use_cache=True):
        """Source ids -> `(target ids (B, max_length), scores (B,))` (TF ops).

        See `translate`; `use_cache=False` recomputes the whole prefix at
        every step (for tests and benchmarks).
        """
        max_length = self._check_max_length(max_length)
        encoded, source_mask = self.encode(source_ids)
        state, step = self.step_functions(encoded, source_mask, beam_size, max_length, use_cache)
        return beam_search(step, state, tf.shape(source_ids)[0], beam_size, max_length,
                           START_ID, END_ID, length_penalty)

    def _check_max_length(self, max_length):
        if max_length is None:
            return self.target_sequence_length
        check_int("max_length", max_length, maximum=self.target_sequence_length,
                  reason=" (the target_sequence_length)")
        return max_length

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
        text = self.target_tokenizer.detokenize(words)
        for pattern, rewrite in _DETOKENIZED_SPACING:
            text = tf.strings.regex_replace(text, pattern, rewrite)
        return tf.strings.strip(text)

    def translation_function(self, beam_size=1, max_length=None, length_penalty=0.6,
                             use_cache=True):
        """A `tf.function` `(B,)` strings -> `(translations (B,), scores (B,))`:
        tokenization, encoding, beam search and detokenization in one graph."""
        self._check_vocabularies()
        max_length = self._check_max_length(max_length)
        key = (beam_size, max_length, float(length_penalty), use_cache)
        if key not in self.graph_functions:
            @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
            @tf.autograph.experimental.do_not_convert  # the loop is tf.while_loop already
            def translate(texts):
                ids, scores = self.decode_ids(self.preprocess(texts), *key)
                return self.detokenize(ids), scores

            self.graph_functions[key] = translate
        return self.graph_functions[key]

    def translate(self, texts, beam_size=1, max_length=None, length_penalty=0.6,
                  batch_size=64):
        """Translates source strings.

        Args:
            texts: a list or 1-D array of strings (or bytes).
            beam_size: hypotheses kept per sentence; 1 is greedy decoding.
            max_length: the most target tokens (`[END]` included); defaults
                to `target_sequence_length`.
            length_penalty: the exponent `alpha` of the GNMT length penalty
                `((5 + length) / 6) ** alpha` that finished hypotheses are
                divided by; 0 compares raw log-probabilities.
            batch_size: sentences decoded together.

        Returns:
            A list of strings, one per text. An empty text gives a short
            (often empty) translation.
        """
        function = self.translation_function(beam_size, max_length, length_penalty)
        texts = self.raw_array(texts)
        outputs = []
        for start in range(0, len(texts), batch_size):
            translated, _ = function(tf.constant(texts[start:start + batch_size]))
            outputs += [t.decode("utf-8") for t in translated.numpy()]
        return outputs

    def predict(self, x, batch_size=None, **kwargs):
        """`translate(x)` as a NumPy array of strings (greedy)."""
        if isinstance(x, tf.data.Dataset):
            x = [t.decode("utf-8") for t in x.unbatch().as_numpy_iterator()] \
                if self.is_batched(x.element_spec) else \
                [t.decode("utf-8") for t in x.as_numpy_iterator()]
        return np.array(self.translate(x, batch_size=batch_size or 64), dtype=object)

    attention_needs_targets = True

    def attention_maps(self, inputs, targets=None):
        """Encoder self-attention and decoder cross-attention of each block,
        decoding `targets` (teacher forcing), or the greedy translations."""
        sources = self.raw_array(inputs)
        targets = self.translate(sources) if targets is None else self.raw_array(targets)
        model_inputs, _, _ = self.preprocess_pair(tf.constant(sources), tf.constant(targets))
        source_ids, decoder_ids = model_inputs["encoder_token_ids"], model_inputs["decoder_token_ids"]
        source_mask, decoder_mask = source_ids != PAD_ID, decoder_ids != PAD_ID
        keys = source_mask.numpy()[:, None, None, :]
        weights, encoded = attention_through(
            self.encoder_blocks, self.source_embedding(source_ids), source_mask)
        maps = [(f"encoder {number}", np.asarray(w), keys, source_mask.numpy())
                for number, w in enumerate(weights, 1)]
        x = self.target_embedding(decoder_ids)
        for number, block in enumerate(self.decoder_blocks, 1):
            scores = block.cross_attention_scores(
                x, encoded, decoder_padding_mask=decoder_mask, encoder_padding_mask=source_mask)
            maps.append((f"decoder {number} cross", np.asarray(scores), keys, decoder_mask.numpy()))
            x = block(x, encoded, decoder_padding_mask=decoder_mask,
                      encoder_padding_mask=source_mask)
        return maps

    def attention_tokens(self, inputs, targets=None):
        sources = self.raw_array(inputs)[:1]
        targets = self.translate(sources) if targets is None else self.raw_array(targets)[:1]
        model_inputs, _, _ = self.preprocess_pair(tf.constant(sources), tf.constant(targets))
        source = [self.source_vocabulary[int(i)]
                  for i in model_inputs["encoder_token_ids"].numpy()[0] if i != PAD_ID]
        target = [self.target_vocabulary[int(i)]
                  for i in model_inputs["decoder_token_ids"].numpy()[0] if i != PAD_ID]
        keys = [source] * (len(self.encoder_blocks) + len(self.decoder_blocks))
        queries = [source] * len(self.encoder_blocks) + [target] * len(self.decoder_blocks)
        return keys, queries

    def attention_sample(self, inputs, targets=None):
        # Its greedy translation, decoded once here, is what the figure's
        # decoder reads (`attention_maps` and `attention_tokens` would each
        # decode it).
        sample = self.text_of_about(inputs, 8)
        return sample, np.array(self.translate(sample))

    # Reports (the training job, `python -m zoo evaluate|predict`).

    def evaluation_report(self, sources, references, batch_size=64, beam_size=4):
        """Corpus BLEU of greedy and beam-`beam_size` translations, and
        examples; `"score"` is the number the model is judged by (BLEU at
        `beam_size`, as `zoo.report.Score`'s fields)."""
        sources = self.raw_array(sources)
        beams = sorted({1, beam_size})
        summary = reports.translation_report(sources, self.raw_array(references), {
            k: self.translate(sources, beam_size=k, batch_size=batch_size) for k in beams
        })
        for k in beams:
            summary[f"bleu_beam_{k}"] = summary["bleu"][str(k)]
        score = {"metric": f"bleu_beam_{beam_size}", "value": summary[f"bleu_beam_{beam_size}"]}
        return {**summary, "score": score, "beam_size": beam_size}

    def format_evaluation(self, summary):
        return reports.format_translation_report(summary)

    def prediction_lines(self, inputs, beam_size=4):
        """`translation<TAB>source` per input."""
        return [f"{translation}\t{source}" for source, translation
                in zip(inputs, self.translate(inputs, beam_size=beam_size))]

    # Configuration, presets and export.

    def architecture(self):
        return {
            "shared_vocabulary": self.shared_vocabulary,
            "vocabulary_size": self.vocabulary_size,
            "source_sequence_length": self.source_sequence_length,
            "target_sequence_length": self.target_sequence_length,
            "hidden_dim": self.hidden_dim,
            "num_encoder_layers": self.num_encoder_layers,
            "num_decoder_layers": self.num_decoder_layers,
            "num_heads": self.num_heads,
            "intermediate_dim": self.intermediate_dim,
            "attention": self.attention,
            "window_size": self.window_size,
            "dropout": self.dropout,
            "tie_embeddings": self.tie_embeddings,
            "label_smoothing": self.label_smoothing,
        }

    def preset_assets(self):
        return {"source_vocabulary": self.source_vocabulary,
                "target_vocabulary": self.target_vocabulary}

    def use_assets(self, source_vocabulary, target_vocabulary):
        self.set_vocabularies(source_vocabulary, target_vocabulary)

    def write_assets(self):
        self._check_vocabularies()
        return {SOURCE_VOCABULARY_FILE: "\n".join(self.source_vocabulary) + "\n",
                TARGET_VOCABULARY_FILE: "\n".join(self.target_vocabulary) + "\n"}

    @classmethod
    def assets_from_preset(cls, loaded):
        return {
            "source_vocabulary": asset_lines(loaded, SOURCE_VOCABULARY_FILE),
            "target_vocabulary": asset_lines(loaded, TARGET_VOCABULARY_FILE),
        }

    def export(self, folder, beam_size=4, max_length=None, length_penalty=0.6, version=None,
               max_texts=MAX_REQUEST_TEXTS, max_text_bytes=MAX_REQUEST_TEXT_BYTES):
        """Exports a TF Serving SavedModel to `folder/<version>/`.

        Signature `serving_default`: `{"text": tf.string[None]}` ->
        `{"translation": tf.string[None]}`, with tokenization, beam search
        over the key/value cache and detokenization inside the graph;
        `beam_size`, `max_length` and `length_penalty` are fixed here. Also
        `translate_with_scores`, which adds `"score": float32[None]`. Loads
        with `tensorflow` and `tensorflow_text` alone. A request of more than
        `max_texts` texts, or with a text of more than `max_text_bytes`
        bytes, gets an `InvalidArgumentError` naming the limit.
        """
        module = _TranslatorServing(self.inference_copy(), beam_size, max_length, length_penalty,
                                    max_texts, max_text_bytes)
        signatures = {
            "serving_default": module.serve.get_concrete_function(),
            "translate_with_scores": module.serve_with_scores.get_concrete_function(),
        }
        return export_saved_model(module, folder, signatures, version)


class _TranslatorServing(tf.Module):
    """What the SavedModel tracks: the network, tokenizers, the decoder."""

    def __init__(self, translator, beam_size, max_length, length_penalty, max_texts,
                 max_text_bytes):
        super().__init__()
        self.max_texts, self.max_text_bytes = int(max_texts), int(max_text_bytes)
        translator._check_vocabularies()
        self.translator = translator
        self.variables_ = list(translator.variables)
        self.source_tokenizer = translator.source_tokenizer
        self.target_tokenizer = translator.target_tokenizer
        # Wrapped so that the SavedModel does not save the inner function
        # as a second, untracked-signature endpoint.
        self._translate = functools.partial(
            translator.translation_function(beam_size, max_length, length_penalty)
        )

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def serve(self, text):
        translation, _ = self._translate(checked_texts(text, self.max_texts,
                                                       self.max_text_bytes))
        return {"translation": translation}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def serve_with_scores(self, text):
        translation, score = self._translate(checked_texts(text, self.max_texts,
                                                           self.max_text_bytes))
        return {"translation": translation, "score": score}
