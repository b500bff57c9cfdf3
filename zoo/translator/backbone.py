"""The translator's backbone: an encoder-decoder transformer over token ids."""

import keras

import keras_selfattn as ksa
from keras_selfattn.layers.base_attention import check_int
from keras_selfattn.layers.transformer_encoder_block import ATTENTION_TYPES
from zoo.translator.preprocessor import PAD_ID


@keras.saving.register_keras_serializable(package="zoo")
class TranslatorBackbone(keras.Model):
    """A transformer encoder-decoder from source and target ids to hidden states.

    Built from the shared blocks, as in "Attention Is All You Need":
    `TokenAndPositionEmbedding` -> `num_encoder_layers`
    `TransformerEncoderBlock`s (attention chosen by name) over the source;
    `TokenAndPositionEmbedding` -> `num_decoder_layers`
    `TransformerDecoderBlock`s (causal self-attention, cross-attention to
    the encoded source) over the target. Id 0 is padding on both sides.
    A subclassed model, not a functional one as the classifiers' backbones:
    decoding calls its parts one step at a time (`decode_step`).
    The task (`zoo.translator.Translator`) adds the projection to the target
    vocabulary; decoding (`zoo.translator.decoding`) steps the decoder one
    token at a time over its key/value caches.

    Args:
        vocabulary_size: rows of each token embedding.
        source_sequence_length, target_sequence_length: rows of each
            position embedding: the longest source and target.
        hidden_dim, num_encoder_layers, num_decoder_layers, num_heads,
        intermediate_dim: sizes.
        attention: the encoder's attention: `"multi_head"`,
            `"local_window"`, `"additive"` or `"self_attention"`.
        window_size: band half-width for `"local_window"`.
        dropout: dropout of the embeddings and of every block.

    Call arguments:
        inputs: `{"encoder_token_ids": (B, S) int32,
            "decoder_token_ids": (B, T) int32}`.

    Returns:
        `(B, T, hidden_dim)` decoder hidden states (teacher forcing).

    Example:

    >>> backbone = TranslatorBackbone(vocabulary_size=20, source_sequence_length=6,
    ...                               target_sequence_length=5, hidden_dim=8,
    ...                               num_encoder_layers=1, num_decoder_layers=1,
    ...                               num_heads=2, intermediate_dim=16)
    >>> hidden = backbone({"encoder_token_ids": np.array([[4, 5, 3, 0, 0, 0]]),
    ...                    "decoder_token_ids": np.array([[2, 7, 0, 0, 0]])})
    >>> tuple(hidden.shape)
    (1, 5, 8)
    """

    def __init__(self, vocabulary_size=4000, source_sequence_length=40,
                 target_sequence_length=40, hidden_dim=128, num_encoder_layers=2,
                 num_decoder_layers=2, num_heads=4, intermediate_dim=512, attention="multi_head",
                 window_size=None, dropout=0.1, **kwargs):
        for name, value in (("vocabulary_size", vocabulary_size),
                            ("source_sequence_length", source_sequence_length),
                            ("target_sequence_length", target_sequence_length)):
            check_int(name, value, minimum=2)
        for name, value in (("num_encoder_layers", num_encoder_layers),
                            ("num_decoder_layers", num_decoder_layers),
                            ("hidden_dim", hidden_dim), ("num_heads", num_heads),
                            ("intermediate_dim", intermediate_dim)):
            check_int(name, value)
        if attention not in ATTENTION_TYPES:
            raise ValueError(f"`attention` must be one of {ATTENTION_TYPES}. "
                             f"Received: attention={attention!r}")
        super().__init__(**kwargs)
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
        # Created in this order, with these names: a translator preset saved
        # before the backbone had its own class holds the same layers
        # (`zoo.translator.translator.LEGACY_WEIGHT_GROUPS`).
        self.source_embedding = ksa.TokenAndPositionEmbedding(
            vocabulary_size, source_sequence_length, hidden_dim, mask_zero=True,
            name="source_embedding")
        self.target_embedding = ksa.TokenAndPositionEmbedding(
            vocabulary_size, target_sequence_length, hidden_dim, mask_zero=True,
            name="target_embedding")
        self.embedding_dropout = keras.layers.Dropout(dropout, name="embedding_dropout")
        self.encoder_blocks = [
            ksa.TransformerEncoderBlock(num_heads, intermediate_dim, attention=attention,
                                        window_size=window_size, dropout=dropout,
                                        name=f"encoder_{i}")
            for i in range(num_encoder_layers)
        ]
        self.decoder_blocks = [
            ksa.TransformerDecoderBlock(num_heads, intermediate_dim, dropout=dropout,
                                        name=f"decoder_{i}")
            for i in range(num_decoder_layers)
        ]

    @property
    def input_dtype(self):
        # What Keras traces the model's own save signature with, in an export.
        return "int32"

    def encode(self, source_ids, training=None):
        """`(B, S)` ids -> `(B, S, hidden_dim)` and the source padding mask."""
        source_mask = source_ids != PAD_ID
        x = self.embedding_dropout(self.source_embedding(source_ids), training=training)
        for block in self.encoder_blocks:
            x = block(x, padding_mask=source_mask, training=training)
        return x, source_mask

    def decode(self, decoder_ids, encoded, source_mask, training=None):
        """Teacher-forced: `(B, T)` ids -> `(B, T, hidden_dim)`."""
        x = self.embedding_dropout(self.target_embedding(decoder_ids), training=training)
        for block in self.decoder_blocks:
            x = block(x, encoded, decoder_padding_mask=decoder_ids != PAD_ID,
                      encoder_padding_mask=source_mask, training=training)
        return x

    def call(self, inputs, training=None):
        encoded, source_mask = self.encode(inputs["encoder_token_ids"], training)
        return self.decode(inputs["decoder_token_ids"], encoded, source_mask, training)

    def cross_attention_caches(self, encoded):
        """Each decoder block's cross-attention keys and values of `encoded`."""
        return ksa.TransformerDecoderBlock.cross_attention_caches(self.decoder_blocks, encoded)

    def empty_caches(self, rows, max_length):
        """Each decoder block's empty self-attention cache, `max_length` long."""
        return [block.empty_self_attention_cache(rows, max_length)
                for block in self.decoder_blocks]

    def decode_step(self, token, index, source_mask, caches, cross_caches):
        """One target position over the caches: `(B, 1)` ids at `index` ->
        `((B, 1, hidden_dim), updated caches)`."""
        x = self.target_embedding(token, start_index=index)
        updated = []
        for block, cache, cross in zip(self.decoder_blocks, caches, cross_caches):
            x, cache, _ = block(x, encoder_padding_mask=source_mask, self_attention_cache=cache,
                                self_attention_cache_update_index=index,
                                cross_attention_cache=cross)
            updated.append(cache)
        return x, updated

    @property
    def token_embeddings(self):
        """The `(vocabulary_size, hidden_dim)` target token embedding variable."""
        return self.target_embedding.token_embedding.embeddings

    def compute_output_shape(self, inputs_shape):
        decoder_shape = inputs_shape["decoder_token_ids"]
        return tuple(decoder_shape) + (self.hidden_dim,)

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
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
        }
