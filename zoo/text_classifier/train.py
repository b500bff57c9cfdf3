"""The text classifier's training job: data in, report, figures, preset and export out."""

import json
from pathlib import Path

import keras
import numpy as np

from zoo import report as reports
from zoo.data import read_labelled_texts
from zoo.datasets import load_sentiment
from zoo.distribute import get_strategy
from zoo.text_classifier.model import TextClassifier

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
    if len(set(labels.tolist())) < 2:
        raise ValueError(
            f"{data}: every row has the label {labels[0]!r}; a classifier needs "
            "at least two classes."
        )
    order = np.random.default_rng(seed).permutation(len(texts))
    cut = max(1, int(len(texts) * validation_fraction))
    validation, train = order[:cut], order[cut:]
    if len(train) < 2:
        raise ValueError(f"{data}: too few rows ({len(texts)}) to train on.")
    return (texts[train], labels[train]), (texts[validation], labels[validation]), test


def train_text_classifier(data, out, preset=None, epochs=3, batch_size=32,
                          strategy="auto", text_column=None, label_column=None,
                          learning_rate=1e-3, max_train_examples=None,
                          architecture=None, verbose="auto", seed=0):
    """Trains (or fine-tunes `preset`), reports, plots, saves and exports.

    Writes under `out/`: `preset/` (checksummed), `export/<version>/` (TF
    Serving), `report.json`, `training_curves.png`, `attention.png`, and
    `backup/` while training (an interrupted run resumes from its last epoch).

    Returns:
        The summary dict also written to `report.json`.
    """
    keras.utils.set_random_seed(seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    train, validation, test = load_training_data(data, text_column, label_column, seed=seed)
    if max_train_examples:
        train = (train[0][:max_train_examples], train[1][:max_train_examples])
    names = sorted(set(train[1].tolist()) | set(validation[1].tolist()))

    strategy = get_strategy(strategy)
    with strategy.scope():
        if preset is not None:
            model = TextClassifier.from_preset(preset, labels=_preset_order(preset, names))
        else:
            model = TextClassifier(labels=names, **(architecture or DEMO_ARCHITECTURE))
        model.compile(optimizer=keras.optimizers.AdamW(learning_rate, weight_decay=0.01))
        if preset is None:
            model.adapt(train[0])
    names = model.display_labels()

    history = model.fit(
        train[0], train[1], validation_data=validation, epochs=epochs,
        batch_size=batch_size, verbose=verbose,
        callbacks=[keras.callbacks.BackupAndRestore(str(out / "backup"))],
    )
    evaluated_on, (texts, labels) = ("test", test) if test is not None else ("validation", validation)
    predicted, _ = model.predict_labels(texts, batch_size=batch_size)
    summary = reports.classification_report(
        model.label_ids(labels), model.label_ids(predicted), names
    )
    print(f"\nEvaluation on the {evaluated_on} set ({len(texts)} texts):")
    print(reports.format_report(summary))

    reports.plot_history(history.history, out / "training_curves.png")
    # A short sentence keeps the heatmap readable.
    candidates = [str(t) for t in validation[0][:50]]
    sample = min(candidates, key=lambda t: abs(len(t.split()) - 12))
    tokens, weights = model.attention_weights(sample)
    reports.plot_attention(tokens, weights, out / "attention.png",
                           title="first encoder block, mean over heads")
    summary.update({
        "evaluated_on": evaluated_on,
        "examples": {"train": len(train[0]), "validation": len(validation[0]),
                     "evaluated": len(texts)},
        "epochs": epochs,
        "preset": preset,
        "history": {k: [float(v) for v in values] for k, values in history.history.items()},
    })
    model.save_to_preset(out / "preset", metadata={"training": {
        "data": str(data), "epochs": epochs, "batch_size": batch_size,
        "learning_rate": learning_rate, "seed": seed,
        f"{evaluated_on}_accuracy": summary["accuracy"],
    }})
    summary["export"] = str(model.export(out / "export"))
    (out / "report.json").write_text(json.dumps(summary, indent=2))
    return summary


def _preset_order(preset, names):
    """Keeps the preset's label order when the data has the same labels."""
    from zoo import presets as preset_io
    from zoo.text_classifier.model import LABELS_FILE, _shipped_presets

    loaded = preset_io.load_preset(preset_io.resolve(preset, _shipped_presets()), "text_classifier")
    preset_labels = json.loads(loaded.asset(LABELS_FILE).read_text())
    return preset_labels if set(preset_labels) == set(names) else names
