"""Ready-built models on keras_selfattn layers (TensorFlow backend).

Each model takes raw inputs in `fit`/`evaluate`/`predict`, loads and saves
checksummed presets, and exports a SavedModel that TF Serving answers.
"""

import importlib
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")


def _backend():
    """The Keras backend this process runs (or will, once Keras is imported)."""
    keras = sys.modules.get("keras")
    if keras is not None and hasattr(keras, "backend"):
        return keras.backend.backend()
    return os.environ["KERAS_BACKEND"]


# The zoo is TensorFlow's (tokenization in tensorflow-text, SavedModel export,
# tf.distribute); the layers of keras_selfattn run on every backend.
if _backend() != "tensorflow":
    raise ImportError(
        f"The zoo runs on Keras's TensorFlow backend, and this process runs on "
        f"{_backend()!r} (KERAS_BACKEND): set KERAS_BACKEND=tensorflow to use it. The layers of "
        "keras_selfattn run on JAX as on TensorFlow.")

# Imported when first used, so that `python -m zoo --help` (and an argument
# error) answers without starting TensorFlow.
_MODELS = {
    "ImageClassifier": "zoo.image_classifier",
    "TextClassifier": "zoo.text_classifier",
    "TextEncoder": "zoo.text_encoder",
    "Translator": "zoo.translator",
}

__all__ = list(_MODELS)


def __getattr__(name):
    if name in _MODELS:
        return getattr(importlib.import_module(_MODELS[name]), name)
    raise AttributeError(f"module 'zoo' has no attribute {name!r}")
