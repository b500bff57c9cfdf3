"""The training job every zoo model shares: fit, report, figures, preset, export.

A model's `train_*` function loads its data, builds (or loads) the model under
the strategy and hands it here; what is written under `out/` is the same for
every model:

    preset/                 checksummed preset (weights without optimizer state)
    export/<version>/       TF Serving SavedModel
    report.json             the model's evaluation (accuracy, per-class P/R/F1 and
                            confusion matrix; or BLEU and examples), history
    training_curves.png     loss and accuracy per epoch
    attention.png           the model's own view of its attention
    backup/                 while training: an interrupted run resumes from it
"""

import json
import shutil
import tempfile
from pathlib import Path

import keras
import numpy as np

from zoo import report as reports
from zoo.presets import atomic_directory


def split_validation(inputs, labels, source, validation_fraction=0.1, seed=0):
    """`(train, validation)`, each `(inputs, labels)`, a fixed random split."""
    require_two_classes(labels, source)
    order = np.random.default_rng(seed).permutation(len(inputs))
    cut = max(1, int(len(inputs) * validation_fraction))
    validation, train = order[:cut], order[cut:]
    if len(train) < 2:
        raise ValueError(f"{source}: too few examples ({len(inputs)}) to train on.")
    return (inputs[train], labels[train]), (inputs[validation], labels[validation])


def require_two_classes(labels, source):
    distinct = sorted({str(label) for label in np.asarray(labels).tolist()})
    if not distinct:
        raise ValueError(f"{source}: no labelled examples.")
    if len(distinct) < 2:
        raise ValueError(
            f"{source}: every example has the label {distinct[0]!r}; a "
            "classifier needs at least two classes."
        )


def label_names(*splits):
    """Sorted label names over `(inputs, labels)` splits."""
    return sorted({str(label) for _, labels in splits for label in labels.tolist()})


def warmup_cosine(learning_rate, total_steps, warmup_fraction=0.1):
    """Linear warmup over the first `warmup_fraction` of the steps to
    `learning_rate`, then cosine decay to 1% of it."""
    warmup = max(1, int(total_steps * warmup_fraction))
    return keras.optimizers.schedules.CosineDecay(
        0.0, max(1, total_steps - warmup), alpha=0.01,
        warmup_target=learning_rate, warmup_steps=warmup,
    )


def train_and_report(model, train, validation, test, out, epochs, batch_size,
                     verbose="auto", callbacks=(), training_metadata=None,
                     summary_extra=None, evaluation_options=None, export_options=None):
    """Fits `model` (compiled), reports on `test` (or `validation` when `test`
    is None), and writes everything listed in the module docstring.

    Returns:
        The summary dict also written to `report.json`.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    history = model.fit(
        train[0], train[1], validation_data=validation, epochs=epochs,
        batch_size=batch_size, verbose=verbose,
        callbacks=[keras.callbacks.BackupAndRestore(str(out / "backup")), *callbacks],
    )
    evaluated_on, (inputs, labels) = (
        ("test", test) if test is not None else ("validation", validation)
    )
    summary = model.evaluation_report(inputs, labels, batch_size=batch_size,
                                      **(evaluation_options or {}))
    print(f"\nEvaluation on the {evaluated_on} set ({len(inputs)} examples):")
    print(model.format_evaluation(summary))

    reports.plot_history(history.history, out / "training_curves.png")
    model.save_attention_figure(validation[0], out / "attention.png")
    summary.update({
        "evaluated_on": evaluated_on,
        "examples": {"train": len(train[0]), "validation": len(validation[0]),
                     "evaluated": len(inputs)},
        "epochs": epochs,
        "history": {k: [float(v) for v in values] for k, values in history.history.items()},
        **(summary_extra or {}),
    })
    model.save_to_preset(out / "preset", metadata={"training": {
        **(training_metadata or {}), "epochs": epochs, "batch_size": batch_size,
        f"{evaluated_on}_{summary['headline']}": summary[summary["headline"]],
    }})
    summary["export"] = str(model.export(out / "export", **(export_options or {})))
    (out / "report.json").write_text(json.dumps(summary, indent=2))
    return summary


def reproduce_preset(train, target):
    """A preset recipe: runs `train(work_folder)` (a training job writing
    `work_folder/preset`) with deterministic ops, then puts that preset at
    `target` atomically.

    Returns:
        The job's summary.
    """
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()
    with tempfile.TemporaryDirectory() as work:
        summary = train(work)
        with atomic_directory(target) as staging:
            shutil.copytree(Path(work) / "preset", staging, dirs_exist_ok=True)
    print(f"wrote {target}; {summary['evaluated_on']} {summary['headline']} "
          f"{summary[summary['headline']]:.4f}")
    return summary


def recipe_command(description, default_target, train, argv=None):
    """The command line of a preset recipe module: `reproduce_preset(train,
    --out FOLDER)`, by default into the shipped preset's folder."""
    import argparse

    parser = argparse.ArgumentParser(description=description.strip().splitlines()[0])
    parser.add_argument("--out", help=f"preset folder (default: {default_target})")
    out = parser.parse_args(argv).out
    return reproduce_preset(train, Path(out) if out else Path(default_target))


def preset_label_order(model_class, preset, names):
    """The preset's label order when the data has the same labels, so that
    fine-tuning keeps the pretrained head; else `names`."""
    preset_labels = model_class.preset_labels(model_class.load_verified_preset(preset))
    return preset_labels if set(preset_labels) == set(names) else names
