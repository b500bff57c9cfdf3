"""Recipe of the shipped preset `rotten_tomatoes_small`.

`python -m zoo.text_classifier.recipe` retrains it from scratch on the training
split of the embedded Rotten Tomatoes snippets (the held-out test split is
never seen) with fixed seeds and deterministic ops, and writes it to
`zoo/text_classifier/presets/rotten_tomatoes_small/`. Rerunning it on the same
versions of TensorFlow and Keras reproduces the same weights.
"""

from zoo.text_classifier.text_classifier import PRESETS_DIR
from zoo.text_classifier.train import EMBEDDED_DATA, train_text_classifier
from zoo.training import recipe_command

PRESET_NAME = "rotten_tomatoes_small"
EPOCHS = 3


def train(work):
    # Every epoch, as the shipped preset was trained (no early stop).
    return train_text_classifier(EMBEDDED_DATA, work, from_scratch=True, epochs=EPOCHS, verbose=2, seed=0,
                                 patience=0)


if __name__ == "__main__":
    recipe_command(__doc__, PRESETS_DIR / PRESET_NAME, train)
