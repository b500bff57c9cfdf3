"""The text classifier's training job: data in, report, figures, preset and export out."""

import keras
import numpy as np

from zoo.data import read_labelled_texts
from zoo.datasets import load_sentiment
from zoo.text_classifier.model import TextClassifier
from zoo.training import (
    TrainingRun, dropout_override, label_names, preset_label_order, split_validation, train_and_report,
)

EMBEDDED_DATA = "rotten-tomatoes"

# The from-scratch architecture of `make demo` and the shipped preset.
DEMO_ARCHITECTURE = dict(
    vocabulary_size=8000, sequence_length=64, hidden_dim=128, num_layers=2,
    num_heads=4, intermediate_dim=256, dropout=0.2,
)


def load_training_data(data, text_column=None, label_column=None,
                       validation_fraction=0.1, seed=0):
    """`(train, validation, test)`, each `(texts, labels)`; test may be None.

    `data` is a CSV/TSV/JSONL file, or `"rotten-tomatoes"` for the embedded
    sentiment data with its fixed held-out test split.
    """
    if data == EMBEDDED_DATA:
        (texts, labels), test = load_sentiment()
        names = ("rotten", "fresh")
        labels = np.array([names[i] for i in labels])
        test = (test[0], np.array([names[i] for i in test[1]]))
    else:
        texts, labels = read_labelled_texts(data, text_column, label_column)
        texts, labels, test = np.array(texts, dtype=object), np.array(labels), None
    train, validation = split_validation(texts, labels, data, validation_fraction, seed)
    return train, validation, test


def train_text_classifier(data, out, preset=None, epochs=3, batch_size=32,
                          run=None, text_column=None, label_column=None,
                          learning_rate=None, max_train_examples=None,
                          architecture=None, dropout=None, verbose="auto", seed=0):
    """Trains (or fine-tunes `preset`), reports, plots, saves and exports.

    Writes under `out/` what `zoo.training.train_and_report` lists.

    Returns:
        The summary dict also written to `report.json`.
    """
    keras.utils.set_random_seed(seed)
    learning_rate = learning_rate or 1e-3
    train, validation, test = load_training_data(data, text_column, label_column, seed=seed)
    if max_train_examples:
        train = (train[0][:max_train_examples], train[1][:max_train_examples])
    names = label_names(train, validation)

    run = run or TrainingRun()
    with run.scope():
        if preset is not None:
            model = TextClassifier.from_preset(
                preset, labels=preset_label_order(TextClassifier, preset, names),
                **dropout_override(dropout),
            )
        else:
            model = TextClassifier(labels=names, **{**(architecture or DEMO_ARCHITECTURE),
                                                     **dropout_override(dropout)})
        run.prepare(model)
        model.compile(optimizer=keras.optimizers.AdamW(learning_rate, weight_decay=0.01),
                      **run.compile_options())
        if preset is None:
            model.adapt(train[0])

    return train_and_report(
        model, train, validation, test, out, epochs, batch_size, verbose=verbose, run=run, seed=seed,
        training_metadata={"data": str(data), "learning_rate": learning_rate, "seed": seed},
        summary_extra={"preset": preset},
    )


# `python -m zoo tune text-classifier`: the sizes, dropout and learning rate
# searched (zoo.tuning), and the validation metric that picks the best.
TUNING_OBJECTIVE = ("val_accuracy", "max")


def search_space(hp):
    """KerasTuner hyperparameters -> `train_text_classifier` arguments."""
    hidden_dim = hp.Choice("hidden_dim", [64, 128, 192])
    return {
        "architecture": {
            **DEMO_ARCHITECTURE, "hidden_dim": hidden_dim,
            "num_layers": hp.Int("num_layers", 1, 3),
            "num_heads": hp.Choice("num_heads", [2, 4]),
            "intermediate_dim": 2 * hidden_dim,
        },
        "dropout": hp.Float("dropout", 0.0, 0.3, step=0.1),
        "learning_rate": hp.Float("learning_rate", 3e-4, 3e-3, sampling="log"),
    }
