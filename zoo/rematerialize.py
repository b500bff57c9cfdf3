"""Trading compute for memory: a layer whose activations are recomputed in the backward pass."""

import tensorflow as tf

SEED_STATE = "seed_generator_state"


def rematerialize(layer):
    """Makes `layer` keep only its inputs for the backward pass, which
    recomputes the rest (`tf.recompute_grad`): a transformer block at 4,096
    tokens then holds one hidden-state tensor instead of about forty until
    the backward pass reaches it.

    Keras's own `keras.RematScope` fails on TensorFlow in graph mode
    (`tf.recompute_grad` takes no keyword arguments there, and every layer
    call passes `training`), and it would redraw dropout in the recomputation.
    Here the layer's call is wrapped with the keyword arguments closed over,
    and the recomputation first restores the dropout seed generators to their
    state before the forward pass, so it draws the same masks and the
    gradients are exact.
    """
    call = layer.call

    def rematerialized_call(inputs, *args, training=None, **kwargs):
        if not training:
            return call(inputs, *args, training=training, **kwargs)
        seeds = [v for v in layer.variables if v.name == SEED_STATE]
        before = [tf.identity(v.value) for v in seeds]

        def forward(x):
            for variable, state in zip(seeds, before):
                variable.assign(state)
            return call(x, *args, training=training, **kwargs)

        return tf.recompute_grad(forward)(inputs)

    layer.call = rematerialized_call
    return layer
