"""What every attention layer of the package shares (private)."""

import string

import keras
from keras import constraints
from keras import initializers
from keras import regularizers

from keras_selfattn import kernels


def check_int(name, value, minimum=1, maximum=None, allow_none=False,
              reason=""):
    """Raises `ValueError` unless `value` is an int (not a bool) in
    `[minimum, maximum]`, or `None` where `allow_none`; `reason` is appended
    to the message."""
    if value is None and allow_none:
        return
    if (isinstance(value, bool) or not isinstance(value, int)
            or value < minimum or (maximum is not None and value > maximum)):
        expected = f"an integer >= {minimum}"
        if maximum is not None:
            expected += f" and <= {maximum}"
        if allow_none:
            expected += " or None"
        raise ValueError(
            f"Invalid argument `{name}`: it must be {expected}{reason}. "
            f"Received: {name}={value!r}"
        )


def check_positive_int(name, value, allow_none=False):
    """Raises `ValueError` unless `value` is a positive int (or allowed None)."""
    check_int(name, value, 1, allow_none=allow_none)


def check_grouped_heads(num_heads, num_key_value_heads):
    """Validates `num_heads` and `num_key_value_heads` (which may be None)."""
    check_positive_int("num_heads", num_heads)
    check_positive_int(
        "num_key_value_heads", num_key_value_heads, allow_none=True
    )
    if num_key_value_heads is not None and num_heads % num_key_value_heads:
        raise ValueError(
            "`num_heads` must be divisible by `num_key_value_heads`. "
            f"Received: num_heads={num_heads}, "
            f"num_key_value_heads={num_key_value_heads}"
        )


def check_query_rows(start, stop, length):
    """Raises `ValueError` unless `0 <= start < stop <= length` (ints)."""
    for name, value in (("start", start), ("stop", stop)):
        check_int(name, value, minimum=0)
    if not start < stop or (isinstance(length, int) and stop > length):
        raise ValueError(
            "The query rows must satisfy 0 <= start < stop <= the sequence "
            f"length ({length}). Received: start={start}, stop={stop}"
        )


def check_rate(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
        0.0 <= value < 1.0
    ):
        raise ValueError(
            f"`{name}` must be a float in [0, 1). Received: {name}={value!r}"
        )


def check_feature_shape(name, shape, min_rank=3, max_rank=None):
    """Validates a `(B, ..., dim)` input shape at build time."""
    shape = tuple(shape)
    rank = len(shape)
    if rank < min_rank or (max_rank is not None and rank > max_rank):
        expected = (
            f"rank {min_rank}" if max_rank == min_rank
            else f"rank >= {min_rank}"
        )
        raise ValueError(
            f"`{name}` must have {expected}, shaped (B, T, dim). "
            f"Received: {name}.shape={shape}"
        )
    if shape[-1] is None:
        raise ValueError(
            f"The last dimension of `{name}` must be known. "
            f"Received: {name}.shape={shape}"
        )
    if any(dim == 0 for dim in shape[1:]):
        raise ValueError(
            f"`{name}` has an empty dimension; sequences must hold at least "
            f"one position. Received: {name}.shape={shape}"
        )
    return shape


def check_float_tensor(name, tensor):
    if "float" not in str(tensor.dtype):  # float16/32/64 and bfloat16
        raise TypeError(
            f"`{name}` must be a floating-point tensor. Received: "
            f"{name}.dtype={tensor.dtype}"
        )


def check_width(name, tensor, expected):
    if tensor.shape[-1] is not None and tensor.shape[-1] != expected:
        raise ValueError(
            f"The last dimension of `{name}` must equal {expected}, the width "
            f"the layer was built with. Received: {name}.shape="
            f"{tuple(tensor.shape)}"
        )


def projection_equation(free_dims, bound_dims, output_dims):
    """Einsum equation and bias axes of a projection, as Keras builds them.

    Using the same letters as `keras.layers.MultiHeadAttention` gives the
    same kernel shapes, so weights move between the two layers unchanged.
    """
    letters = string.ascii_lowercase
    free = letters[:free_dims]
    bound = letters[free_dims:free_dims + bound_dims]
    output = letters[free_dims + bound_dims:free_dims + bound_dims + output_dims]
    return f"{free}{bound},{bound}{output}->{free}{output}", output


class BaseAttention(keras.layers.Layer):
    """Base of the attention layers: common arguments, projections, config.

    Args:
        dropout: rate of dropout on the attention weights.
        use_bias: whether the projections have biases.
        kernel_initializer, bias_initializer: initializers of the projections.
        kernel_regularizer, bias_regularizer, activity_regularizer:
            regularizers of the projections.
        kernel_constraint, bias_constraint: constraints of the projections.
        seed: seed of the dropout.
    """

    def __init__(
        self,
        dropout=0.0,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        activity_regularizer=None,
        kernel_constraint=None,
        bias_constraint=None,
        seed=None,
        **kwargs,
    ):
        check_rate("dropout", dropout)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"`seed` must be an int or None. Received: seed={seed!r}")
        super().__init__(**kwargs)
        self.supports_masking = True
        self.dropout = dropout
        self.use_bias = use_bias
        self.seed = seed
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        self.kernel_regularizer = regularizers.get(kernel_regularizer)
        self.bias_regularizer = regularizers.get(bias_regularizer)
        self.projection_activity_regularizer = regularizers.get(
            activity_regularizer
        )
        self.kernel_constraint = constraints.get(kernel_constraint)
        self.bias_constraint = constraints.get(bias_constraint)
        self.dropout_layer = keras.layers.Dropout(
            rate=dropout, seed=seed, dtype=self.dtype_policy
        )

    def projection(self, name, input_shape, output_dims, bound_dims=1,
                   activation=None):
        """A built `EinsumDense` mapping the last `bound_dims` axes to `output_dims`."""
        free_dims = len(input_shape) - bound_dims
        equation, bias_axes = projection_equation(
            free_dims, bound_dims, len(output_dims)
        )
        # Fresh initializer objects per sublayer: a shared seeded instance
        # would give every projection the same values.
        layer = keras.layers.EinsumDense(
            equation,
            output_shape=[None] * (free_dims - 1) + list(output_dims),
            bias_axes=bias_axes if self.use_bias else None,
            activation=activation,
            name=name,
            kernel_initializer=self.kernel_initializer.__class__.from_config(
                self.kernel_initializer.get_config()
            ),
            bias_initializer=self.bias_initializer.__class__.from_config(
                self.bias_initializer.get_config()
            ),
            kernel_regularizer=self.kernel_regularizer,
            bias_regularizer=self.bias_regularizer,
            activity_regularizer=self.projection_activity_regularizer,
            kernel_constraint=self.kernel_constraint,
            bias_constraint=self.bias_constraint,
            dtype=self.dtype_policy,
        )
        # A projection acts on each position alone, so a padding mask passes
        # through it unchanged (and Keras stops warning that it is lost).
        layer.supports_masking = True
        layer.build(tuple(input_shape))
        return layer

    def build_head_projections(self, query_shape, key_shape, value_shape,
                               num_heads, num_key_value_heads, key_dim,
                               value_dim, output_shape, use_gate=False):
        """Creates the query, key, (gate,) value and output projections.

        Sets `query_dense`, `key_dense`, `gate_dense` when `use_gate`,
        `value_dense` and `output_dense`, created in the order of
        `keras.layers.MultiHeadAttention`, so weight lists line up with it.
        """
        self.query_dense = self.projection(
            "query", query_shape, (num_heads, key_dim)
        )
        self.key_dense = self.projection(
            "key", key_shape, (num_key_value_heads, key_dim)
        )
        if use_gate:
            self.gate_dense = self.projection(
                "gate", query_shape, (num_heads, value_dim),
                activation="sigmoid",
            )
        self.value_dense = self.projection(
            "value", value_shape, (num_key_value_heads, value_dim)
        )
        self.output_dense = self.projection(
            "attention_output",
            tuple(query_shape[:-1]) + (num_heads, value_dim),
            tuple(output_shape),
            bound_dims=2,
        )

    def apply_dropout(self, training):
        if self.dropout == 0.0:
            return None
        return lambda weights: self.dropout_layer(weights, training=training)

    def needs_dense_weights(self, training, return_attention_scores):
        """Whether this call needs the weights themselves: to return them,
        or to drop some out (the blocked kernels have no dropout)."""
        return bool(return_attention_scores or (self.dropout > 0.0 and training))

    def uses_blocked_kernel(self, batch, query_length, key_length, training,
                            return_attention_scores):
        """Whether this call takes `kernels.blocked_attention`.

        Read from `self.attention_impl`; returned weights and active dropout
        need the dense kernel whatever it says.
        """
        if self.needs_dense_weights(training, return_attention_scores):
            return False
        return kernels.uses_blocked_kernel(
            self.attention_impl, batch, self.num_heads, query_length,
            key_length,
        )

    def get_config(self):
        return {
            **super().get_config(),
            "dropout": self.dropout,
            "use_bias": self.use_bias,
            "kernel_initializer": initializers.serialize(self.kernel_initializer),
            "bias_initializer": initializers.serialize(self.bias_initializer),
            "kernel_regularizer": regularizers.serialize(self.kernel_regularizer),
            "bias_regularizer": regularizers.serialize(self.bias_regularizer),
            "activity_regularizer": regularizers.serialize(
                self.projection_activity_regularizer
            ),
            "kernel_constraint": constraints.serialize(self.kernel_constraint),
            "bias_constraint": constraints.serialize(self.bias_constraint),
            "seed": self.seed,
        }


class SequenceSelfAttention(BaseAttention):
    """Base of the single-input layers (`SelfAttention`, `LocalWindow`, `Additive`).

    Subclasses set `self.num_heads` and `self.output_width` in `build` and
    implement `compute_attention`, the overridable math.
    """

    def check_input_shape(self, input_shape):
        return check_feature_shape("inputs", input_shape, 3, 3)

    def call(
        self,
        inputs,
        mask=None,
        attention_mask=None,
        use_causal_mask=False,
        return_attention_scores=False,
        training=None,
    ):
        check_float_tensor("inputs", inputs)
        check_width("inputs", inputs, self.input_width)
        batch, length = kernels.static_or_dynamic_shape(inputs)[:2]
        attention_mask = kernels.normalize_attention_mask(
            attention_mask, length, length,
            batch if isinstance(batch, int) else None, self.num_heads,
        )
        output, scores = self.compute_attention(
            inputs,
            padding_mask=mask,
            attention_mask=attention_mask,
            use_causal_mask=use_causal_mask,
            training=training,
            return_attention_scores=return_attention_scores,
        )
        if return_attention_scores:
            return output, scores
        return output

    def compute_attention(self, inputs, padding_mask, attention_mask,
                          use_causal_mask, training, return_attention_scores):
        """Returns `(output (B, T, width), weights (B, H, T, T) or None)`."""
        raise NotImplementedError

    def attention_rows(self, inputs, start, stop, mask=None,
                       attention_mask=None, use_causal_mask=False):
        """The attention weights of queries `start:stop` on every key.

        What `return_attention_scores=True` returns, rows `start:stop` of
        it; a subclass that can computes them without the `T x T` weights
        (`LocalWindow`, `MultiHead`), which lets a caller read a long
        sequence's weights a few rows at a time.

        Args:
            inputs: `(B, T, dim)`.
            start, stop: the query positions, `0 <= start < stop <= T`.
            mask, attention_mask, use_causal_mask: as in `call`.

        Returns:
            `(B, heads, stop - start, T)`.
        """
        check_query_rows(start, stop, inputs.shape[1])
        _, scores = self(inputs, mask=mask, attention_mask=attention_mask,
                         use_causal_mask=use_causal_mask,
                         return_attention_scores=True, training=False)
        return scores[:, :, start:stop]

    def compute_output_shape(self, input_shape):
        input_shape = self.check_input_shape(input_shape)
        return input_shape[:-1] + (self.output_width_for(input_shape),)

    def compute_output_spec(self, inputs, mask=None, attention_mask=None,
                            use_causal_mask=False,
                            return_attention_scores=False, training=None):
        output_shape = self.compute_output_shape(inputs.shape)
        output = keras.KerasTensor(output_shape, dtype=self.compute_dtype)
        if not return_attention_scores:
            return output
        batch, length = inputs.shape[:2]
        scores = keras.KerasTensor(
            (batch, self.num_heads_for(inputs.shape), length, length),
            dtype=self.compute_dtype,
        )
        return output, scores

    def output_width_for(self, input_shape):
        raise NotImplementedError

    def num_heads_for(self, input_shape):
        raise NotImplementedError
