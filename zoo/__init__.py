"""Ready-built models on keras_selfattn layers (TensorFlow backend).

Each model takes raw inputs in `fit`/`evaluate`/`predict`, loads and saves
checksummed presets, and exports a SavedModel that TF Serving answers.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from zoo.image_classifier import ImageClassifier  # noqa: E402
from zoo.text_classifier import TextClassifier  # noqa: E402
from zoo.text_encoder import TextEncoder  # noqa: E402
from zoo.translator import Translator  # noqa: E402

__all__ = ["ImageClassifier", "TextClassifier", "TextEncoder", "Translator"]
