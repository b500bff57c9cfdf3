"""The translator task: source strings in, target strings out.

A task in keras-hub's manner: a `TranslatorBackbone` (`backbone.py`), a
`TranslatorPreprocessor` holding both tokenizers (`preprocessor.py`) and an
output projection to the target vocabulary, with decoding in
`decoding.py` and the SavedModel in `serving.py`.
"""

from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from keras_selfattn.layers.base_attention import check_int
from zoo import report as reports
from zoo.backbone import attention_through
from zoo.export import export_saved_model
from zoo.pipeline import RawInputModel, text_array
from zoo.preset_model import PresetModel
from zoo.presets import KERAS_ARGUMENTS, load_checked_weights, preset_config
from zoo.translator.backbone import TranslatorBackbone
from zoo.translator.decoding import beam_search, step_functions
from zoo.translator.preprocessor import (
    END_ID, PAD_ID, START_ID, TranslatorPreprocessor, learn_vocabularies,
)
from zoo.translator.serving import MAX_REQUEST_TEXT_BYTES, MAX_REQUEST_TEXTS, TranslatorServing

KIND = "translator"
PRESETS_DIR = Path(__file__).resolve().parent / "presets"
# Where the weights of a preset written before the backbone had its own
# class live now: the layers are the same, one level down.
LEGACY_WEIGHT_GROUPS = {
    "decoder_blocks": "backbone/decoder_blocks",
    "embedding_dropout": "backbone/embedding_dropout",
    "encoder_blocks": "backbone/encoder_blocks",
    "layers/token_and_position_embedding": "backbone/layers/token_and_position_embedding",
    "layers/token_and_position_embedding_1": "backbone/layers/token_and_position_embedding_1",
}


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
        config = {**super().get_config(), "label_smoothing": self.label_smoothing}
        del config["reduction"]  # always this loss's own; `__init__` sets it
        return config


@keras.saving.register_keras_serializable(package="zoo")
class Translator(PresetModel, RawInputModel):
    """A transformer encoder-decoder translator that takes and returns strings.

    The task holds a `TranslatorBackbone`, a `TranslatorPreprocessor` (both
    WordPiece tokenizers, case and accents kept) and the projection to the
    target vocabulary, tied to the target embedding or not.
    `fit(source_texts, target_texts)` trains with padding masked out of the
    loss and label smoothing; `translate` decodes with a key/value cache and
    beam search in one `tf.function`; `export` writes a SavedModel that maps
    strings to strings.

    Args:
        backbone: a `TranslatorBackbone` (or its config); None builds one
            from the sizes below.
        preprocessor: a `TranslatorPreprocessor` (or its config); None
            builds one from the vocabularies and sequence lengths.
        source_vocabulary, target_vocabulary: WordPiece vocabularies (lists
            starting with `[PAD] [UNK] [START] [END]`); when `None` they are
            learned from the training pairs at the first `fit` (or `adapt`).
        shared_vocabulary: learn one vocabulary from both sides.
        tie_embeddings: project to the target vocabulary with the target
            embedding matrix.
        label_smoothing: for the default loss of `compile`.
        **sizes: a new backbone's (`TranslatorBackbone`'s arguments:
            `vocabulary_size`, `source_sequence_length`,
            `target_sequence_length`, `hidden_dim`, ...). `vocabulary_size`
            is also the most tokens a learned vocabulary may hold
            (`from_training_pairs` sets it to what the vocabularies hold).

    Call arguments:
        inputs: `{"encoder_token_ids": (B, S) int32,
            "decoder_token_ids": (B, T) int32}`.

    Returns:
        `(B, T, vocabulary_size)` float32 next-token logits.

    Example:

    >>> model = Translator(hidden_dim=16, intermediate_dim=32, num_heads=2,
    ...                    num_encoder_layers=1, num_decoder_layers=1,
    ...                    source_sequence_length=8, target_sequence_length=8)
    >>> model.compile()
    >>> _ = model.fit(["good day"] * 16, ["guten Tag"] * 16, epochs=1, verbose=0)
    >>> len(model.translate(["good day"]))
    1
    """

    # Random batches of interface messages are padded to about 5x their
    # mean length; grouped by length, an epoch took 14 s instead of 41.
    groups_by_length = True

    raw_input_spec = tf.TensorSpec((), tf.string)
    kind = KIND
    presets_dir = PRESETS_DIR
    backbone_cls = TranslatorBackbone
    preprocessor_cls = TranslatorPreprocessor
    adjustable = ("dropout", "label_smoothing")

    def __init__(self, backbone=None, preprocessor=None, *, source_vocabulary=None,
                 target_vocabulary=None, shared_vocabulary=False, tie_embeddings=True,
                 label_smoothing=0.1, **sizes):
        keras_arguments = {k: sizes.pop(k) for k in KERAS_ARGUMENTS if k in sizes}
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(
                f"`label_smoothing` must lie in [0, 1). Received: label_smoothing={label_smoothing!r}"
            )
        if backbone is None:
            backbone = TranslatorBackbone(name="backbone", **sizes)
        elif isinstance(backbone, dict):
            # A preset's configuration, with what a load may change (`dropout`).
            backbone = TranslatorBackbone.from_config({**backbone, **sizes, "name": "backbone"})
        elif sizes:
            raise ValueError(f"Give the sizes {sorted(sizes)} in the backbone, not beside it.")
        if preprocessor is None:
            preprocessor = TranslatorPreprocessor(
                source_sequence_length=backbone.source_sequence_length,
                target_sequence_length=backbone.target_sequence_length,
                shared_vocabulary=shared_vocabulary)
        elif isinstance(preprocessor, dict):
            preprocessor = TranslatorPreprocessor(**preprocessor)
        preprocessor.max_vocabulary_size = backbone.vocabulary_size
        for side in ("source", "target"):
            length = f"{side}_sequence_length"
            if getattr(preprocessor, length) > getattr(backbone, length):
                raise ValueError(
                    f"The preprocessor's {length}={getattr(preprocessor, length)} exceeds the "
                    f"backbone's {getattr(backbone, length)} positions.")
        super().__init__(**keras_arguments)
        self.tie_embeddings = tie_embeddings
        self.label_smoothing = label_smoothing
        self.backbone = backbone
        if tie_embeddings:
            self.output_projection = TiedOutputProjection(name="output_projection")
        else:
            self.output_projection = keras.layers.Dense(
                backbone.vocabulary_size, dtype="float32", name="output_projection")
        self._set_untracked(preprocessor=preprocessor, graph_functions={})
        if source_vocabulary is not None or target_vocabulary is not None:
            self.set_vocabularies(source_vocabulary, target_vocabulary)
        # Calling the network once creates every weight, so presets and
        # checkpoints load into a complete model.
        self({"encoder_token_ids": np.ones((1, backbone.source_sequence_length), "int32"),
              "decoder_token_ids": np.ones((1, backbone.target_sequence_length), "int32")})

    # The backbone's sizes, read where the task's users look for them.

    vocabulary_size = property(lambda self: self.backbone.vocabulary_size)
    source_sequence_length = property(lambda self: self.preprocessor.source_sequence_length)
    target_sequence_length = property(lambda self: self.preprocessor.target_sequence_length)
    shared_vocabulary = property(lambda self: self.preprocessor.shared_vocabulary)
    hidden_dim = property(lambda self: self.backbone.hidden_dim)
    dropout = property(lambda self: self.backbone.dropout)

    # Tokenization.

    def set_vocabularies(self, source_vocabulary, target_vocabulary=None):
        """Sets both vocabularies (the same one when `target_vocabulary` is None
        and the vocabulary is shared)."""
        self.preprocessor.set_vocabularies(source_vocabulary, target_vocabulary)
        self._set_untracked(graph_functions={})

    @property
    def source_vocabulary(self):
        return self.preprocessor.source_vocabulary

    @property
    def target_vocabulary(self):
        return self.preprocessor.target_vocabulary

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
        vocabularies = learn_vocabularies(source_texts, target_texts, vocabulary_size,
                                          shared_vocabulary)
        return cls(source_vocabulary=vocabularies[0], target_vocabulary=vocabularies[1],
                   shared_vocabulary=shared_vocabulary,
                   vocabulary_size=max(len(vocabulary) for vocabulary in vocabularies), **kwargs)

    def adapt(self, source_texts, target_texts):
        """Learns the WordPiece vocabularies from training pairs (at most
        `vocabulary_size` tokens each; `from_training_pairs` also sizes the
        model to them)."""
        self.preprocessor.learn(source_texts, target_texts, self.vocabulary_size)
        self._set_untracked(graph_functions={})

    def preprocess(self, texts):
        """`(B,)` source strings -> `(B, S)` token ids (`TranslatorPreprocessor.source_ids`)."""
        self.preprocessor.check_vocabularies()
        return self.in_graph(self._source_ids, texts)

    def preprocess_pair(self, sources, targets):
        """Raw pairs -> `({"encoder_token_ids", "decoder_token_ids"},
        next-token targets, weights that are 0 on padding)`."""
        self.preprocessor.check_vocabularies()
        return self.in_graph(self._pair, sources, targets)

    def _source_ids(self, texts):
        return self.preprocessor.source_ids(texts, self.static_shapes)

    def _pair(self, sources, targets):
        return self.preprocessor.pair(sources, targets, self.static_shapes)

    def detokenize(self, target_ids):
        """`(B, L)` ids (ended by `[END]`) -> `(B,)` readable strings."""
        return self.preprocessor.detokenize(target_ids)

    def targets(self, y):
        return self.raw_array(y)

    def tf_targets(self, y):
        return y

    def raw_array(self, x):
        return text_array(x)

    def prepare_for_training(self, x, y):
        if self.source_vocabulary is None:
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
        return self.backbone.encode(source_ids, training)

    def project(self, x):
        """`(B, T, hidden_dim)` -> `(B, T, vocabulary_size)` float32 logits."""
        if self.tie_embeddings:
            return self.output_projection(x, self.backbone.token_embeddings)
        return self.output_projection(x)

    def call(self, inputs, training=None):
        return self.project(self.backbone(inputs, training=training))

    # Decoding.

    def step_functions(self, encoded, source_mask, beam_size, max_length, use_cache=True):
        """`zoo.translator.decoding.step_functions` of this model."""
        return step_functions(self.backbone, self.project, encoded, source_mask, beam_size,
                              max_length, use_cache)

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

    def translation_function(self, beam_size=1, max_length=None, length_penalty=0.6,
                             use_cache=True):
        """A `tf.function` `(B,)` strings -> `(translations (B,), scores (B,))`:
        tokenization, encoding, beam search and detokenization in one graph."""
        self.preprocessor.check_vocabularies()
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
        backbone = self.backbone
        weights, encoded = attention_through(
            backbone.encoder_blocks, backbone.source_embedding(source_ids), source_mask)
        maps = [(f"encoder {number}", np.asarray(w), keys, source_mask.numpy())
                for number, w in enumerate(weights, 1)]
        x = backbone.target_embedding(decoder_ids)
        for number, block in enumerate(backbone.decoder_blocks, 1):
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
        layers = self.backbone.num_encoder_layers, self.backbone.num_decoder_layers
        keys = [source] * sum(layers)
        queries = [source] * layers[0] + [target] * layers[1]
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

    def get_config(self):
        return {**super().get_config(), "backbone": preset_config(self.backbone),
                "preprocessor": self.preprocessor.get_config(),
                "tie_embeddings": self.tie_embeddings, "label_smoothing": self.label_smoothing}

    def preset_assets(self):
        return self.preprocessor.assets()

    def use_assets(self, source_vocabulary, target_vocabulary):
        self.set_vocabularies(source_vocabulary, target_vocabulary)

    def write_assets(self):
        return self.preprocessor.asset_files()

    @classmethod
    def assets_from_preset(cls, loaded):
        return TranslatorPreprocessor.assets_from_preset(loaded)

    @classmethod
    def with_preset_weights(cls, loaded, **arguments):
        """`cls(**arguments)` with the weights of the verified preset
        `loaded`, written in this layout or the one before the backbone had
        its own class (a flat configuration: the sizes the constructor takes
        for a new backbone; weights in `LEGACY_WEIGHT_GROUPS`)."""
        if "backbone" in arguments:
            return super().with_preset_weights(loaded, **arguments)
        model = cls(**arguments)
        load_checked_weights(model, loaded, regroup=LEGACY_WEIGHT_GROUPS)
        return model

    @classmethod
    def check_overrides(cls, config, overrides):
        flat = config if "backbone" not in config else {
            **config["backbone"], **config["preprocessor"],
            **{k: v for k, v in config.items() if k not in ("backbone", "preprocessor")}}
        super().check_overrides(flat, overrides)

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
        module = TranslatorServing(self.inference_copy(), beam_size, max_length, length_penalty,
                                   max_texts, max_text_bytes)
        return export_saved_model(module, folder, module.signatures(), version)
