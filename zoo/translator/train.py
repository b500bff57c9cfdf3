"""The translator's training job: sentence pairs in, BLEU, figures, preset and export out."""

from pathlib import Path

import keras
import numpy as np

from zoo.data import read_sentence_data
from zoo.datasets import load_message_pairs, split_pairs
from zoo.training import (
    DEFAULT_PATIENCE, Job, announce_body, dropout_override, split_validation, train_and_report,
    warmup_cosine,
)
from zoo.training_run import TrainingRun
from zoo.translator.translator import Translator

EMBEDDED_DATA = "gramps"
DEFAULT_LANGUAGE = "de"

# The from-scratch architecture of the command line and the shipped preset;
# `vocabulary_size` caps the learned vocabularies, and the model is sized to
# what they hold (`Translator.from_training_pairs`).
DEFAULT_ARCHITECTURE = dict(
    vocabulary_size=4000, source_sequence_length=40, target_sequence_length=40,
    hidden_dim=128, num_encoder_layers=2, num_decoder_layers=2, num_heads=4,
    intermediate_dim=512, dropout=0.1, label_smoothing=0.1,
)
DEFAULT_EPOCHS = 30


def embedded_language(data):
    """The language of `"gramps"` / `"gramps:LANG"`, or None for a file."""
    if data == EMBEDDED_DATA:
        return DEFAULT_LANGUAGE
    if isinstance(data, str) and data.startswith(EMBEDDED_DATA + ":"):
        return data.split(":", 1)[1]
    return None


def load_training_data(data, validation_fraction=0.1, seed=0, validation_data=None):
    """`(train, validation, test, counts)`, each split `(sources, targets)`;
    test may be None, and so are the counts (`zoo.data.ReadCounts`) of the
    embedded corpus.

    `data` is a TSV/JSONL file of pairs, or `"gramps[:LANG]"` for the
    embedded interface messages, English -> LANG (German by default), with
    their fixed held-out test split of 500 pairs. `validation_data`, a
    file of the same kind, replaces the validation split.
    """
    language = embedded_language(data)
    counts = None
    if language is not None:
        (sources, targets), test = split_pairs(load_message_pairs(language))
    else:
        sources, targets, counts = read_sentence_data(data)
        sources, targets = np.array(sources, dtype=object), np.array(targets, dtype=object)
        test = None
    validation = None
    if validation_data is not None:
        held = read_sentence_data(validation_data)
        validation = (np.array(held[0], dtype=object), np.array(held[1], dtype=object))
    train, validation = split_validation(sources, targets, data, validation_fraction, seed,
                                         validation, classes=False)
    return train, validation, test, counts


def train_translator(data, out, preset=None, epochs=None, batch_size=64, run=None,
                     learning_rate=None, max_train_examples=None, beam_size=4,
                     architecture=None, dropout=None, validation_data=None,
                     patience=DEFAULT_PATIENCE, verbose="auto", seed=0):
    """Trains (or fine-tunes `preset`), reports BLEU, plots, saves and exports.

    From scratch, the network has `DEFAULT_ARCHITECTURE`'s sizes, with those
    in `architecture` instead of its own. Writes under `out/` what
    `zoo.training.train_and_report` lists; the export decodes with `beam_size`.

    Returns:
        A `zoo.training.TrainingResult` (its `report` is `report.json`'s).
    """
    keras.utils.set_random_seed(seed)
    epochs = epochs or DEFAULT_EPOCHS
    learning_rate = learning_rate or (5e-4 if preset else 2e-3)
    if preset is not None:
        announce_body(Translator, preset)
    train, validation, test, counts = load_training_data(data, seed=seed,
                                                         validation_data=validation_data)
    if counts is not None:
        print(counts.summary(), flush=True)
    data_rows = {"data_rows": counts.as_dict()} if counts else {}
    if max_train_examples:
        train = (train[0][:max_train_examples], train[1][:max_train_examples])
    steps = epochs * -(-len(train[0]) // batch_size)

    run = run or TrainingRun()
    with run.scope():
        if preset is not None:
            model = Translator.from_preset(preset, **dropout_override(dropout))
        else:
            model = Translator.from_training_pairs(*train, **{
                **DEFAULT_ARCHITECTURE, **(architecture or {}), **dropout_override(dropout)})
        run.prepare(model)
        model.compile(optimizer=keras.optimizers.AdamW(
            warmup_cosine(learning_rate, steps), weight_decay=0.01
        ), **run.compile_options())

    return train_and_report(model, Job(
        train=train, validation=validation, test=test, out=Path(out), epochs=epochs,
        batch_size=batch_size, seed=seed, verbose=verbose, patience=patience,
        metadata={"data": str(data), "learning_rate": learning_rate, "seed": seed, **data_rows},
        report_extra={"preset": preset, **data_rows},
        evaluation_options={"beam_size": beam_size},
        export_options={"beam_size": beam_size},
    ), run)


# `python -m zoo tune translator`: the sizes, dropout and learning rate
# searched (zoo.tuning), and the validation metric that picks the best.
TUNING_OBJECTIVE = ("val_loss", "min")


def search_space(hp):
    """KerasTuner hyperparameters -> `train_translator` arguments."""
    hidden_dim = hp.Choice("hidden_dim", [64, 128, 192])
    layers = hp.Int("num_layers", 1, 3)
    return {
        "architecture": {
            "hidden_dim": hidden_dim,
            "num_encoder_layers": layers, "num_decoder_layers": layers,
            "num_heads": hp.Choice("num_heads", [2, 4]),
            "intermediate_dim": 4 * hidden_dim,
        },
        "dropout": hp.Float("dropout", 0.0, 0.3, step=0.1),
        "learning_rate": hp.Float("learning_rate", 5e-4, 4e-3, sampling="log"),
    }
