"""The text backbone: token ids to hidden states, built from keras_selfattn layers."""

import keras

import keras_selfattn as ksa
from keras_selfattn.layers.base_attention import check_positive_int
from keras_selfattn.layers.transformer_encoder_block import ATTENTION_TYPES
from zoo.backbone import Backbone
from zoo.rematerialize import rematerialize as rematerialize_layer

ACTIVATIONS = ("gelu", "gelu_approximate", "relu")


@keras.saving.register_keras_serializable(package="zoo")
def gelu_approximate(x):
    """GELU by its tanh approximation, as keras-hub's `BertBackbone` uses."""
    return keras.activations.gelu(x, approximate=True)


def _activation(name):
    if name not in ACTIVATIONS:
        raise ValueError(f"`activation` must be one of {ACTIVATIONS}. Received: activation={name!r}")
    return gelu_approximate if name == "gelu_approximate" else name


@keras.saving.register_keras_serializable(package="zoo")
class TextBackbone(Backbone):
    """A transformer encoder from token ids to hidden states.

    The body every zoo text model shares (the classifier, the masked
    language model) and the network converted BERT-family checkpoints map
    into (`zoo.text_transformer.convert`): a token embedding plus learned
    position embeddings (BERT's constant type-0 row folded into the
    positions), an optional embedding layer norm, `num_layers`
    `TransformerEncoderBlock`s, a final layer norm with pre-norm blocks, and
    an optional pooler (`tanh(Dense(h[:, 0]))`, as BERT's).

    Token id 0 is padding: the embedding's Keras mask makes every block
    ignore it, so a batch may be padded to any length.

    Args:
        vocabulary_size: rows of the token embedding.
        num_layers, num_heads, hidden_dim, intermediate_dim: sizes.
        sequence_length: rows of the position embedding.
        attention: `"multi_head"`, `"local_window"`, `"additive"` or
            `"self_attention"`; the first two have the same weights, so a
            backbone trained with one runs with the other.
        window_size: band half-width of `"local_window"`.
        global_tokens: with `"local_window"`, how many leading tokens
            (`[CLS]`) attend to every token and are attended by every token,
            as Longformer's global attention (`LocalWindow`).
        dropout: dropout of the residual branches.
        attention_dropout: dropout of the attention weights; defaults to
            `dropout`, or to 0 with `"local_window"`, so that training takes
            the blocked band kernel (which has no dropout) rather than holding
            every block's weights for the backward pass (9.2 GiB against 5.4
            GiB for MiniLM at 4,096 tokens, `bench/RESULTS.md`).
        activation: `"gelu"` (exact, erf), `"gelu_approximate"` (tanh) or
            `"relu"`, of the feed-forward layers.
        layer_norm_epsilon: epsilon of every layer norm.
        embedding_norm: layer-normalize the embeddings (BERT does).
        normalize_first: pre-norm blocks and a final layer norm.
        pooler: add BERT's pooler, output as `"pooled_output"`.
        rematerialize: keep only each block's input for the backward pass
            and recompute the rest there (`zoo.rematerialize`): MiniLM
            fine-tuned at 4,096 tokens, batch 2, peaks at 3.1 GiB instead of
            5.9 GiB, for about 22% more time per step (`bench/RESULTS.md`).

    Call arguments:
        token_ids: `(B, T)` int32 ids, 0 for padding, `T <= sequence_length`.

    Returns:
        `{"sequence_output": (B, T, hidden_dim)}`, plus `"pooled_output"`
        `(B, hidden_dim)` with `pooler=True`.

    Example:

    >>> backbone = TextBackbone(vocabulary_size=100, num_layers=1, num_heads=2,
    ...                         hidden_dim=8, intermediate_dim=16)
    >>> backbone(np.array([[2, 7, 3, 0]]))["sequence_output"].shape
    TensorShape([1, 4, 8])
    """

    # What a pretrained backbone may change (`with_changes`): no weight depends on it.
    adjustable = ("attention", "window_size", "global_tokens", "dropout", "attention_dropout",
                  "sequence_length", "rematerialize")

    def __init__(self, vocabulary_size, num_layers, num_heads, hidden_dim, intermediate_dim,
                 sequence_length=512, attention="multi_head", window_size=None,
                 global_tokens=0, dropout=0.1, attention_dropout=None, activation="gelu",
                 layer_norm_epsilon=1e-5, embedding_norm=False, normalize_first=False,
                 pooler=False, rematerialize=False, **kwargs):
        for name, value in (("vocabulary_size", vocabulary_size), ("num_layers", num_layers),
                            ("num_heads", num_heads), ("hidden_dim", hidden_dim),
                            ("intermediate_dim", intermediate_dim),
                            ("sequence_length", sequence_length)):
            check_positive_int(name, value)
        if attention not in ATTENTION_TYPES:
            raise ValueError(f"`attention` must be one of {ATTENTION_TYPES}. "
                             f"Received: attention={attention!r}")
        # The layers first, as attributes: the task models and the attention
        # figures walk them (`embed`, `blocks`).
        self.embedding = ksa.TokenAndPositionEmbedding(
            vocabulary_size, sequence_length, hidden_dim, mask_zero=True, name="embedding")
        self.embedding_normalization = keras.layers.LayerNormalization(
            epsilon=layer_norm_epsilon, name="embedding_norm") if embedding_norm else None
        self.blocks = [
            ksa.TransformerEncoderBlock(
                num_heads, intermediate_dim, attention=attention, window_size=window_size,
                global_tokens=global_tokens, dropout=dropout,
                attention_dropout=self._attention_dropout(attention_dropout, dropout,
                                                          attention),
                activation=_activation(activation),
                normalize_first=normalize_first, layer_norm_epsilon=layer_norm_epsilon,
                name=f"encoder_{i}")
            for i in range(num_layers)
        ]
        self.final_normalization = keras.layers.LayerNormalization(
            epsilon=layer_norm_epsilon, name="final_norm") if normalize_first else None
        self.pooler = keras.layers.Dense(hidden_dim, activation="tanh", name="pooler") \
            if pooler else None

        if rematerialize:
            for block in self.blocks:
                rematerialize_layer(block)
        token_ids = keras.Input((None,), dtype="int32", name="token_ids")
        x = self.embed(token_ids)
        for block in self.blocks:
            x = block(x)
        if self.final_normalization is not None:
            x = self.final_normalization(x)
        outputs = {"sequence_output": x}
        if self.pooler is not None:
            outputs["pooled_output"] = self.pooler(x[:, 0])
        super().__init__(inputs=token_ids, outputs=outputs, **kwargs)

        self.vocabulary_size = vocabulary_size
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.hidden_dim = hidden_dim
        self.intermediate_dim = intermediate_dim
        self.sequence_length = sequence_length
        self.attention = attention
        self.window_size = window_size
        self.global_tokens = global_tokens
        self.dropout = dropout
        self.attention_dropout = attention_dropout
        self.activation = activation
        self.layer_norm_epsilon = layer_norm_epsilon
        self.embedding_norm = embedding_norm
        self.normalize_first = normalize_first
        self.has_pooler = pooler
        self.rematerialize = rematerialize

    @staticmethod
    def _attention_dropout(attention_dropout, dropout, attention):
        if attention_dropout is not None:
            return attention_dropout
        return 0.0 if attention == "local_window" else dropout

    def embed(self, token_ids):
        """`(B, T)` token ids -> the first block's input `(B, T, hidden_dim)`."""
        x = self.embedding(token_ids)
        if self.embedding_normalization is not None:
            x = self.embedding_normalization(x)
        return x

    @property
    def token_embeddings(self):
        """The `(vocabulary_size, hidden_dim)` token embedding variable."""
        return self.embedding.token_embedding.embeddings

    @property
    def position_embeddings(self):
        """The `(sequence_length, hidden_dim)` position embedding variable."""
        return self.embedding.position_embedding.position_embeddings

    @classmethod
    def from_config(cls, config):
        # Presets written before 2026-12-07 (the shipped ones among them)
        # call the positions `max_sequence_length`.
        config = dict(config)
        if "max_sequence_length" in config:
            config["sequence_length"] = config.pop("max_sequence_length")
        return super().from_config(config)

    def with_changes(self, **changes):
        """A new backbone with `changes` to its configuration and this one's
        weights: `attention`, `window_size` and `global_tokens` keep every
        weight (the attentions share them), the dropouts change none, and a
        larger `sequence_length` tiles the learned positions
        (`tiled_positions`)."""
        return super().with_changes(**changes)

    def carried_over(self, ours, theirs, other):
        if theirs is other.position_embeddings:
            return tiled_positions(ours, other.sequence_length)
        return ours

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "vocabulary_size": self.vocabulary_size,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "hidden_dim": self.hidden_dim,
            "intermediate_dim": self.intermediate_dim,
            "sequence_length": self.sequence_length,
            "attention": self.attention,
            "window_size": self.window_size,
            "global_tokens": self.global_tokens,
            "dropout": self.dropout,
            "attention_dropout": self.attention_dropout,
            "activation": self.activation,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "embedding_norm": self.embedding_norm,
            "normalize_first": self.normalize_first,
            "pooler": self.has_pooler,
            "rematerialize": self.rematerialize,
        }


def tiled_positions(embeddings, length):
    """Position embeddings `(T, D)` -> `(length, D)`: cut when shorter;
    when longer, the learned table copied end to end (as Longformer
    extended RoBERTa's 512 positions), so every position keeps a trained
    vector and each window of the original length looks like training."""
    rows = embeddings.shape[0]
    if length <= rows:
        return keras.ops.convert_to_tensor(embeddings)[:length]
    repeats = -(-length // rows)
    return keras.ops.tile(embeddings, (repeats, 1))[:length]
