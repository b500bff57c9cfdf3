"""The residual, normalization and feed-forward parts both blocks share (private)."""

import keras

from keras_selfattn import kernels
from keras_selfattn.layers.base_attention import check_positive_int
from keras_selfattn.layers.base_attention import check_rate


class ResidualBlock(keras.layers.Layer):
    """Base of the transformer blocks: residual sublayers, pre- or post-norm."""

    def __init__(self, num_heads, intermediate_dim, key_dim=None, dropout=0.0,
                 attention_dropout=0.0, activation="gelu",
                 normalize_first=False, layer_norm_epsilon=1e-5,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros",
                 attention_impl="auto", **kwargs):
        check_positive_int("num_heads", num_heads)
        check_positive_int("intermediate_dim", intermediate_dim)
        check_positive_int("key_dim", key_dim, allow_none=True)
        check_rate("dropout", dropout)
        check_rate("attention_dropout", attention_dropout)
        kernels.check_attention_impl(attention_impl)
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.intermediate_dim = intermediate_dim
        self.key_dim = key_dim
        self.dropout = dropout
        self.attention_dropout = attention_dropout
        self.activation = keras.activations.get(activation)
        self.normalize_first = normalize_first
        self.layer_norm_epsilon = layer_norm_epsilon
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.attention_impl = attention_impl
        self.supports_masking = True

    def head_width(self, hidden_dim):
        if self.key_dim is not None:
            return self.key_dim
        if hidden_dim % self.num_heads:
            raise ValueError(
                "With key_dim=None the hidden width must be divisible by "
                f"num_heads. Received: hidden width {hidden_dim}, "
                f"num_heads={self.num_heads}"
            )
        return hidden_dim // self.num_heads

    def initializers(self):
        return dict(
            kernel_initializer=self.kernel_initializer.__class__.from_config(
                self.kernel_initializer.get_config()
            ),
            bias_initializer=self.bias_initializer.__class__.from_config(
                self.bias_initializer.get_config()
            ),
        )

    def build_residual(self, name, shape):
        """A layer norm and a dropout for one residual sublayer."""
        norm = keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon, dtype=self.dtype_policy,
            name=f"{name}_norm",
        )
        norm.build(shape)
        dropout = keras.layers.Dropout(
            self.dropout, dtype=self.dtype_policy, name=f"{name}_dropout"
        )
        return norm, dropout

    def build_feed_forward(self, shape):
        self.feed_forward_norm, self.feed_forward_dropout = (
            self.build_residual("feed_forward", shape)
        )
        self.intermediate_dense = keras.layers.Dense(
            self.intermediate_dim, activation=self.activation,
            dtype=self.dtype_policy, name="intermediate_dense",
            **self.initializers(),
        )
        self.intermediate_dense.build(shape)
        self.output_dense = keras.layers.Dense(
            shape[-1], dtype=self.dtype_policy, name="output_dense",
            **self.initializers(),
        )
        self.output_dense.build(tuple(shape[:-1]) + (self.intermediate_dim,))

    def residual(self, inputs, sublayer, norm, dropout, training):
        """`inputs + sublayer(...)`, normalized before or after."""
        x = norm(inputs) if self.normalize_first else inputs
        x, *extra = _as_tuple(sublayer(x))
        x = dropout(x, training=training) + inputs
        if not self.normalize_first:
            x = norm(x)
        return (x, *extra) if extra else x

    def feed_forward(self, inputs, training):
        return self.residual(
            inputs,
            lambda x: self.output_dense(self.intermediate_dense(x)),
            self.feed_forward_norm,
            self.feed_forward_dropout,
            training,
        )

    def compute_output_shape(self, input_shape, *args, **kwargs):
        return tuple(input_shape)

    def get_config(self):
        return {
            **super().get_config(),
            "num_heads": self.num_heads,
            "intermediate_dim": self.intermediate_dim,
            "key_dim": self.key_dim,
            "dropout": self.dropout,
            "attention_dropout": self.attention_dropout,
            "activation": keras.activations.serialize(self.activation),
            "normalize_first": self.normalize_first,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "kernel_initializer": keras.initializers.serialize(
                self.kernel_initializer
            ),
            "bias_initializer": keras.initializers.serialize(
                self.bias_initializer
            ),
            "attention_impl": self.attention_impl,
        }


def _as_tuple(x):
    return x if isinstance(x, tuple) else (x,)
