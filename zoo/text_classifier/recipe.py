"""Recipe of the shipped preset `rotten_tomatoes_small`.

`python -m zoo.text_classifier.recipe` retrains it from scratch on the training
split of the embedded Rotten Tomatoes snippets (the held-out test split is
never seen) with fixed seeds and deterministic ops, and writes it to
`zoo/text_classifier/presets/rotten_tomatoes_small/`. Rerunning it on the same
versions of TensorFlow and Keras reproduces the same weights.
"""

import argparse
from pathlib import Path

from zoo.text_classifier.model import PRESETS_DIR
from zoo.text_classifier.train import EMBEDDED_DATA, train_text_classifier
from zoo.training import reproduce_preset

PRESET_NAME = "rotten_tomatoes_small"
EPOCHS = 3


def main(out=None):
    return reproduce_preset(
        lambda work: train_text_classifier(EMBEDDED_DATA, work, epochs=EPOCHS, verbose=2, seed=0),
        Path(out) if out else PRESETS_DIR / PRESET_NAME,
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help=f"preset folder (default: the shipped {PRESET_NAME})")
    main(parser.parse_args().out)
