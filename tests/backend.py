"""What the layer tests need from the Keras backend they run on (TensorFlow,
JAX or PyTorch: `KERAS_BACKEND`): gradients, a compiled call, a tensor.

The layers are written in `keras.ops`; only these few things differ
between backends, so each layer test file runs unchanged on each.
"""

import keras
import numpy as np
import pytest

BACKEND = keras.backend.backend()

# For a test of something that only TensorFlow has (a `tf.function` graph
# with unknown dimensions, a SavedModel, `tf.distribute`).
tensorflow_only = pytest.mark.skipif(
    BACKEND != "tensorflow", reason="checks TensorFlow's own graphs or formats")


def gradients(loss_of, inputs, variables=()):
    """The gradient of the scalar `loss_of(*inputs)` with respect to each
    of `inputs` (arrays) and each Keras variable of `variables`, as NumPy
    arrays, in that order.

    On JAX the gradient is one `jax.jit` program, as Keras's JAX trainer
    runs a step: taken op by op, every operation of every new shape was
    compiled on its own (two layer files: 59 CPU-s instead of 40)."""
    inputs = [keras.ops.convert_to_tensor(x) for x in inputs]
    variables = list(variables)
    if BACKEND == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            tape.watch(inputs)
            loss = loss_of(*inputs)
        found = tape.gradient(loss, inputs + variables)
    elif BACKEND == "jax":
        import jax

        def loss_of_values(input_values, variable_values):
            with keras.StatelessScope(state_mapping=list(zip(variables, variable_values))):
                return loss_of(*input_values)

        found = jax.jit(jax.grad(loss_of_values, argnums=(0, 1)))(
            inputs, [variable.value for variable in variables])
        found = [*found[0], *found[1]]
    elif BACKEND == "torch":
        import torch

        inputs = [x.detach().requires_grad_(True) for x in inputs]
        loss = loss_of(*inputs)
        found = torch.autograd.grad(loss, inputs + [v.value for v in variables],
                                    allow_unused=True)
    else:
        raise NotImplementedError(BACKEND)
    return [None if g is None else np.asarray(keras.ops.convert_to_numpy(g)) for g in found]


def run_as_a_step(function, *arrays):
    """`function(*arrays)`, run as the backend runs a model's step: on JAX
    one `jax.jit` program, elsewhere eagerly. `function` takes the arrays
    positionally and anything else (flags, sizes, a built layer) from its
    closure; `None` may stand for an absent array.

    Op by op, JAX compiles every operation of every new shape on its own: a
    file of random shapes spent 12 ms a compile, 495 compiles."""
    if BACKEND == "jax":
        import jax

        return jax.jit(function)(*arrays)
    return function(*arrays)


def compiled(function):
    """`function` compiled by the backend's XLA (`tf.function(jit_compile=True)`,
    `jax.jit`), or `torch.compile`."""
    if BACKEND == "tensorflow":
        import tensorflow as tf

        return tf.function(function, jit_compile=True)
    if BACKEND == "jax":
        import jax

        return jax.jit(function)
    if BACKEND == "torch":
        import torch

        return torch.compile(function)
    raise NotImplementedError(BACKEND)


def numpy(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


def largest_training_tensor(loss_of, shape, variables=()):
    """The most elements of any tensor the backend's traced program for
    `loss_of(x)` and its gradients (with respect to `x`, float32 of
    `shape`, and `variables`) holds: the graph of a `tf.function` and its
    loop bodies, or the jaxpr of `jax.grad` and its sub-jaxprs."""
    variables = list(variables)
    if BACKEND == "tensorflow":
        import tensorflow as tf

        @tf.function
        def step(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                loss = loss_of(x)
            return tape.gradient(loss, [x] + variables)

        largest = 0
        for graph in _tensorflow_graphs(step.get_concrete_function(
                tf.TensorSpec(shape, tf.float32)).graph):
            for op in graph.get_operations():
                for output in op.outputs:
                    if output.shape.rank is not None and output.shape.is_fully_defined():
                        largest = max(largest, int(np.prod(output.shape)))
        return largest
    if BACKEND == "jax":
        import jax

        def loss_of_values(x, variable_values):
            with keras.StatelessScope(state_mapping=list(zip(variables, variable_values))):
                return loss_of(x)

        program = jax.make_jaxpr(jax.grad(loss_of_values, argnums=(0, 1)))(
            jax.ShapeDtypeStruct(shape, "float32"), [v.value for v in variables])
        return _largest_in_jaxpr(program.jaxpr)
    raise NotImplementedError(BACKEND)


def _tensorflow_graphs(graph):
    """The graph and the bodies of its loops and gradient functions."""
    yield graph
    for function in graph._functions.values():
        yield from _tensorflow_graphs(function.graph) if hasattr(function, "graph") else ()


def _largest_in_jaxpr(jaxpr):
    largest = 0
    for equation in jaxpr.eqns:
        for variable in equation.outvars:
            shape = getattr(variable.aval, "shape", ())
            largest = max(largest, int(np.prod(shape)) if shape else 1)
        for parameter in equation.params.values():
            for inner in parameter if isinstance(parameter, (list, tuple)) else [parameter]:
                inner = getattr(inner, "jaxpr", inner)  # a ClosedJaxpr's Jaxpr
                if hasattr(inner, "eqns"):
                    largest = max(largest, _largest_in_jaxpr(inner))
    return largest
