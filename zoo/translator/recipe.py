"""Recipe of the shipped preset `gramps_en_de_small`.

`python -m zoo.translator.recipe` retrains it from scratch on the training
split of the embedded English -> German Gramps interface messages (the fixed
held-out 500 pairs are never seen) with fixed seeds and deterministic ops,
through the same job as `python -m zoo train translator --data gramps`, and
writes it to `zoo/translator/presets/gramps_en_de_small/`. Rerunning it on
the same versions of TensorFlow and Keras reproduces the same weights.
"""

from zoo.training import recipe_command
from zoo.translator.translator import PRESETS_DIR
from zoo.translator.train import EMBEDDED_DATA, train_translator

PRESET_NAME = "gramps_en_de_small"


def train(work):
    # Every epoch, as the shipped preset was trained (no early stop).
    return train_translator(EMBEDDED_DATA, work, verbose=2, seed=0,
                            patience=0)


if __name__ == "__main__":
    recipe_command(__doc__, PRESETS_DIR / PRESET_NAME, train)
