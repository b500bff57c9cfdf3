"""Recipe of the shipped preset `gramps_en_de_small`.

`python -m zoo.translator.recipe` retrains it from scratch on the training
split of the embedded English -> German Gramps interface messages (the fixed
held-out 500 pairs are never seen) with fixed seeds and deterministic ops,
through the same job as `python -m zoo train translator --data gramps`, and
writes it to `zoo/translator/presets/gramps_en_de_small/`. Rerunning it on
the same versions of TensorFlow and Keras reproduces the same weights.
"""

import argparse
from pathlib import Path

from zoo.training import reproduce_preset
from zoo.translator.model import PRESETS_DIR
from zoo.translator.train import EMBEDDED_DATA, train_translator

PRESET_NAME = "gramps_en_de_small"


def main(out=None):
    return reproduce_preset(
        lambda work: train_translator(EMBEDDED_DATA, work, verbose=2, seed=0),
        Path(out) if out else PRESETS_DIR / PRESET_NAME,
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help=f"preset folder (default: the shipped {PRESET_NAME})")
    main(parser.parse_args().out)
