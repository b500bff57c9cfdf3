"""Ready-built models on keras_selfattn layers (TensorFlow backend).

Each model takes raw inputs in `fit`/`evaluate`/`predict`, loads and saves
checksummed presets, and exports a SavedModel that TF Serving answers.
"""

import importlib
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

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
