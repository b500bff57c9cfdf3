"""Transformer encoder block with a choice of attention."""

import keras

from keras_selfattn.layers.additive import Additive
from keras_selfattn.layers.base_attention import check_feature_shape
from keras_selfattn.layers.base_attention import check_positive_int
from keras_selfattn.layers.local_window import LocalWindow
from keras_selfattn.layers.multi_head import MultiHead
from keras_selfattn.layers.self_attention import SelfAttention
from keras_selfattn.layers.transformer_common import ResidualBlock

ATTENTION_TYPES = ("multi_head", "local_window", "additive", "self_attention")


@keras.saving.register_keras_serializable(package="keras_selfattn")
class TransformerEncoderBlock(ResidualBlock):
    """Self-attention and a feed-forward network, each in a residual branch.

    The encoder layer of "Attention Is All You Need", post-norm by default,
    pre-norm (Xiong et al., 2020) with `normalize_first=True`. The attention
    is chosen by name among the package's four layers.

    Args:
        num_heads: attention heads (ignored by `self_attention`).
        intermediate_dim: width of the feed-forward hidden layer.
        attention: `"multi_head"`, `"local_window"`, `"additive"` or
            `"self_attention"`.
        key_dim: width of each head; defaults to `dim // num_heads`.
        window_size: band half-width for `local_window` (required there) and
            optional for `additive`.
        global_tokens: `local_window` only: leading positions with global
            attention (see `LocalWindow`).
        dropout: dropout after each residual branch.
        attention_dropout: dropout on the attention weights.
        activation: activation of the feed-forward hidden layer.
        normalize_first: pre-norm instead of post-norm.
        layer_norm_epsilon: epsilon of the layer norms.
        kernel_initializer, bias_initializer: of the dense layers.
        attention_impl: `"auto"`, `"dense"` or `"blocked"`, passed to the
            `multi_head` and `self_attention` layers (see `MultiHead`).

    Call arguments:
        inputs: `(B, T, dim)`.
        padding_mask: `(B, T)` boolean; defaults to the input's Keras mask.
        attention_mask: boolean, broadcastable to `(B, heads, T, T)`.
        use_causal_mask: whether position `i` may only see `j <= i`.
        training: whether dropout is active.

    Returns:
        `(B, T, dim)`, carrying the input's Keras mask.

    Example:

    >>> x = keras.random.normal((2, 12, 16))
    >>> tuple(TransformerEncoderBlock(4, 32, attention="local_window",
    ...                               window_size=4)(x).shape)
    (2, 12, 16)
    """

    def __init__(self, num_heads, intermediate_dim, attention="multi_head",
                 window_size=None, global_tokens=0, **kwargs):
        if attention not in ATTENTION_TYPES:
            raise ValueError(
                f"`attention` must be one of {ATTENTION_TYPES}. Received: "
                f"attention={attention!r}"
            )
        check_positive_int("window_size", window_size,
                           allow_none=attention != "local_window")
        if global_tokens and attention != "local_window":
            raise ValueError(
                "`global_tokens` needs attention='local_window'. Received: "
                f"attention={attention!r}, global_tokens={global_tokens!r}"
            )
        super().__init__(num_heads, intermediate_dim, **kwargs)
        self.attention = attention
        self.window_size = window_size
        self.global_tokens = global_tokens

    def build(self, input_shape):
        shape = check_feature_shape("inputs", input_shape, 3, 3)
        dim = shape[-1]
        common = dict(
            dropout=self.attention_dropout, dtype=self.dtype_policy,
            name="attention", **self.initializers(),
        )
        if self.attention == "multi_head":
            layer = MultiHead(self.num_heads, self.head_width(dim),
                              attention_impl=self.attention_impl, **common)
        elif self.attention == "local_window":
            layer = LocalWindow(self.num_heads, self.head_width(dim),
                                self.window_size,
                                global_tokens=self.global_tokens, **common)
        elif self.attention == "additive":
            layer = Additive(units=dim, num_heads=self.num_heads,
                             window_size=self.window_size, **common)
        else:
            layer = SelfAttention(units=dim,
                                  attention_impl=self.attention_impl, **common)
        layer.build(shape)
        self.attention_layer = layer
        self.attention_norm, self.attention_dropout_layer = (
            self.build_residual("attention", shape)
        )
        self.build_feed_forward(shape)

    def call(self, inputs, padding_mask=None, attention_mask=None,
             use_causal_mask=False, training=None, mask=None):
        padding_mask = mask if padding_mask is None else padding_mask
        x = self.residual(
            inputs,
            lambda x: self._attend(x, padding_mask, attention_mask,
                                   use_causal_mask, training),
            self.attention_norm,
            self.attention_dropout_layer,
            training,
        )
        return self.feed_forward(x, training)

    def attention_scores(self, inputs, padding_mask=None, attention_mask=None,
                         use_causal_mask=False, query_rows=None):
        """The block's attention weights `(B, heads, T, T)` for `inputs`, or
        with `query_rows=(start, stop)` rows `start:stop` of them, computed
        without the `T x T` weights (see `MultiHead.attention_rows`)."""
        x = self.attention_norm(inputs) if self.normalize_first else inputs
        if query_rows is not None:
            return self.attention_layer.attention_rows(
                x, *query_rows, mask=padding_mask,
                attention_mask=attention_mask, use_causal_mask=use_causal_mask,
            )
        _, scores = self._attend(x, padding_mask, attention_mask,
                                 use_causal_mask, training=False,
                                 return_attention_scores=True)
        return scores

    def _attend(self, x, padding_mask, attention_mask, use_causal_mask,
                training, return_attention_scores=False):
        # MultiHead takes Keras's query/value masks; the others one mask.
        if isinstance(self.attention_layer, MultiHead):
            masks = dict(query_mask=padding_mask, value_mask=padding_mask)
        else:
            masks = dict(mask=padding_mask)
        return self.attention_layer(
            x, attention_mask=attention_mask, use_causal_mask=use_causal_mask,
            return_attention_scores=return_attention_scores,
            training=training, **masks,
        )

    def get_config(self):
        return {
            **super().get_config(),
            "attention": self.attention,
            "window_size": self.window_size,
            "global_tokens": self.global_tokens,
        }
