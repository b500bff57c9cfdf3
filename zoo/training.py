"""The training job every zoo model shares: fit, report, figures, preset, export.

A model's `train_*` function loads its data, builds (or loads) the model under
its `zoo.training_run.TrainingRun` (where and how fast it trains) and hands it
here with a `Job` (what it learns from and what is recorded);
`train_and_report` returns a `TrainingResult`. Resuming an interrupted run is
`zoo.resume`'s. What is written under `out/` is the same for every model:

    preset/                 checksummed preset (weights without optimizer state)
    export/<version>/       TF Serving SavedModel
    report.json             the model's evaluation (accuracy, per-class P/R/F1 and
                            confusion matrix; or BLEU and examples), history per
                            epoch and per step
    training_curves.png     loss and accuracy per epoch (per step in a short run)
    attention.png           every head of every attention layer on one example
                            (images: where each head looks, and more figures:
                            `ImageClassifier.save_attention_figure`)
    backup/                 while training: checkpoints an interrupted run resumes
                            from (backup/<task>/ per worker in a cluster)
"""

import dataclasses
import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import keras
import numpy as np

from zoo import distribute
from zoo import report as reports
from zoo.publishing import replaced_directory, write_text_atomic
from zoo.report import Score
from keras_selfattn.layers.base_attention import check_int
from zoo.resume import (
    LOCK_FILE, StopWhenDone, TrainingCheckpoint, exclusive_folder, resumable_fit, run_fingerprint,
)
from zoo.training_run import TrainingRun, process_outputs


# Epochs without a better validation accuracy before a run stops (`Job`).
DEFAULT_PATIENCE = 5
# The best epoch's weights, beside the checkpoints, for a resumed run.
BEST_WEIGHTS_FILE = "best.weights.h5"

@dataclasses.dataclass(frozen=True)
class Job:
    """What one training job learns from, for how long, and what it records
    beside the model: everything `train_and_report` needs apart from the
    model and the `TrainingRun`.

    Args:
        train, validation: `(inputs, labels)` of raw inputs (texts, image
            bytes or arrays, source sentences) and their labels or targets.
        test: `(inputs, labels)` the report is computed on, or None for
            `validation`.
        out: the output folder (the module docstring lists what goes in).
        epochs, batch_size, seed: of `fit`.
        verbose: `fit`'s verbosity.
        metadata: how the run was made (data path, learning rate, seed,
            columns read): kept in the preset's metadata and in the run's
            fingerprint, so a checkpoint resumes only into the same job.
        report_extra: more entries for `report.json`.
        evaluation_options, export_options, figure_options: keyword
            arguments of the model's `evaluation_report`, `export` and
            `save_attention_figure`.
        callbacks: more Keras callbacks for `fit`.
        patience: stop once validation accuracy has not improved for this
            many epochs, keeping the best epoch's weights (`StopWhenDone`);
            0 trains every epoch.

    Example:

    ```python
    job = Job(train=(texts, labels), validation=(val_texts, val_labels),
              test=None, out="runs/reviews", epochs=3, batch_size=32)
    result = train_and_report(model, job)
    print(result.score)  # "validation accuracy: ..."
    ```
    """

    train: tuple
    validation: tuple
    test: tuple
    out: Path
    epochs: int
    batch_size: int
    seed: int = 0
    verbose: object = "auto"
    metadata: dict = dataclasses.field(default_factory=dict)
    report_extra: dict = dataclasses.field(default_factory=dict)
    evaluation_options: dict = dataclasses.field(default_factory=dict)
    export_options: dict = dataclasses.field(default_factory=dict)
    figure_options: dict = dataclasses.field(default_factory=dict)
    callbacks: tuple = ()
    patience: int = DEFAULT_PATIENCE

    def __post_init__(self):
        check_int("epochs", self.epochs, minimum=1)
        check_int("batch_size", self.batch_size, minimum=1)
        check_int("patience", self.patience, minimum=0)

    @property
    def evaluated(self):
        """`(split name, (inputs, labels))` the report is computed on."""
        return ("test", self.test) if self.test is not None else ("validation", self.validation)


@dataclasses.dataclass(frozen=True)
class TrainingResult:
    """What a training job returns.

    Attributes:
        score: the number the model is judged by (`zoo.report.Score`).
        report: everything `report.json` holds.
        preset: the preset folder written, or None on a worker that is not
            the chief (it writes nothing).
        export: the SavedModel version folder, or None when not exported.
    """

    score: Score
    report: dict
    preset: Path = None
    export: Path = None


def dropout_override(dropout):
    """`{"dropout": dropout}` when given (the command line's `--dropout`), else `{}`."""
    if dropout is None:
        return {}
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1). Received: {dropout}.")
    return {"dropout": dropout}


# Fewer validation examples than this make validation figures noise (one
# example: 0 or 100%); a split that small gets a one-line warning.
MIN_VALIDATION_EXAMPLES = 20


def split_validation(inputs, labels, source, validation_fraction=0.1, seed=0, validation=None,
                     classes=True):
    """`(train, validation)`, each `(inputs, labels)`: `validation` as given
    (read from `--validation-data`) with every example to train on, else a
    fixed random split of `validation_fraction`, with a one-line warning when
    it holds fewer than `MIN_VALIDATION_EXAMPLES`."""
    if classes:
        require_two_classes(labels, source)
    if validation is not None:
        if len(validation[0]) == 0:
            raise ValueError(f"The validation data holds no examples; {source} needs some.")
        return (inputs, labels), validation
    order = np.random.default_rng(seed).permutation(len(inputs))
    cut = max(1, int(len(inputs) * validation_fraction))
    held, train = order[:cut], order[cut:]
    if len(train) < 2:
        raise ValueError(f"{source}: too few examples ({len(inputs)}) to train on.")
    if cut < MIN_VALIDATION_EXAMPLES:
        print(f"warning: the validation split holds {cut} example{'s' * (cut != 1)} "
              f"({validation_fraction:.0%} of {len(inputs)}), fewer than the "
              f"{MIN_VALIDATION_EXAMPLES} that make its figures more than noise: give more data, "
              "or a separate file with --validation-data.", flush=True)
    return (inputs[train], labels[train]), (inputs[held], labels[held])


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


def train_and_report(model, job, run=None):
    """Fits `model` (compiled under `run`) on `job`, reports on its test
    split (or validation split), and writes everything listed in the module
    docstring.

    In a cluster every worker runs all of it (the steps are collective) but
    only the chief writes into `job.out` (`zoo.training_run.process_outputs`).
    Each worker keeps its own backup to rejoin from after a restart.

    Args:
        model: a compiled zoo model (`RawInputModel`).
        job: the `Job`.
        run: the `TrainingRun` the model was built and compiled under.

    Returns:
        A `TrainingResult`.
    """
    run = run or TrainingRun()
    with process_outputs(run, job.out) as outputs, exclusive_folder(outputs.backup):
        if run.restart:
            discard_checkpoints(outputs.backup)
        stopper = StopWhenDone(job.patience, outputs.backup / BEST_WEIGHTS_FILE)
        checkpoint = TrainingCheckpoint(
            outputs.backup, run.checkpoint_every,
            run_fingerprint(model, job.train, job.epochs, job.batch_size, job.metadata),
            every_seconds=60 * run.checkpoint_minutes, on_save=[stopper.persist])
        monitoring = monitoring_callbacks(model, run, job.validation, outputs.tensorboard)
        history, steps = resumable_fit(
            model, job.train, job.validation, job.epochs, job.batch_size, checkpoint,
            verbose=job.verbose, seed=job.seed, callbacks=[*monitoring, *job.callbacks],
            stopper=stopper,
        )
        step_history = checkpoint.step_history.as_dict()
        split, (inputs, labels) = job.evaluated
        evaluation = model.evaluation_report(inputs, labels, batch_size=job.batch_size,
                                             **job.evaluation_options)
        print(f"\nEvaluation on the {split} set ({len(inputs)} examples):")
        print(model.format_evaluation(evaluation))
        score = Score(split=split, **evaluation["score"])
        if run.figures:
            reports.plot_history(history, outputs.folder / "training_curves.png", step_history)
            model.save_attention_figure(job.validation[0], outputs.folder / "attention.png",
                                        **job.figure_options)
        report = {
            **evaluation,
            "score": score.as_dict(),
            "evaluated_on": split,
            "examples": {"train": len(job.train[0]), "validation": len(job.validation[0]),
                         "evaluated": len(inputs)},
            "epochs": job.epochs,
            "epochs_trained": len(next(iter(history.values()), [])),
            "best_epoch": None if stopper.best_epoch is None else stopper.best_epoch + 1,
            "patience": job.patience,
            "steps": steps,
            "strategy": distribute.describe(run.distribution),
            "precision": run.precision,
            "wrote_outputs": outputs.is_chief,
            # The last epoch's line, already printed by the monitor.
            "attention": next((c.statistics for c in monitoring
                               if isinstance(c, AttentionMonitor)), None),
            "history": history,
            "step_history": step_history,
            **job.report_extra,
        }
        preset = outputs.folder / "preset"
        # One copy without the optimizer (LoRA adapters merged) for the preset
        # and the export: each would otherwise build a whole model of its own.
        served = model.inference_copy()
        served.save_to_preset(preset, metadata={"training": {
            **job.metadata, "epochs": job.epochs, "batch_size": job.batch_size,
            score.key: score.value,
        }})
        export = None
        if run.export:
            export = served.export(outputs.folder / "export", **job.export_options)
            report["export"] = str(export)
        write_text_atomic(outputs.folder / "report.json", json.dumps(report, indent=2))
        # Done: the backup would only make a rerun skip its training.
        shutil.rmtree(outputs.backup, ignore_errors=True)
    if outputs.backup.parent.name == "backup" and not any(outputs.backup.parent.iterdir()):
        outputs.backup.parent.rmdir()
    if not outputs.is_chief:
        preset = export = None  # written into the worker's temporary folder, now gone
    return TrainingResult(score=score, report=report, preset=preset,
                          export=None if export is None else Path(export))


def discard_checkpoints(backup):
    """`--restart`: empties the backup folder, whose lock this process holds."""
    # The lock file stays: removing it would let a third run lock a new one.
    discarded = [p for p in backup.iterdir() if p.name != LOCK_FILE]
    if discarded:
        print(f"--restart: discarding the checkpoint in {backup}", flush=True)
    for path in discarded:
        shutil.rmtree(path, ignore_errors=True)


class AttentionMonitor(keras.callbacks.Callback):
    """Logs, at each epoch's end, every attention head's normalized entropy
    and the share of heads that have collapsed (near one-hot or near
    uniform; see `zoo.report.attention_statistics`) on a fixed sample
    batch: one line on stdout, and with `log_dir` TensorBoard scalars and
    images of the sample's first example (every head of every layer).

    Its cost grows with the examples times their query-key pairs, so long
    sequences take fewer examples: as many as hold `ATTENTION_PAIRS` pairs
    per head (8 of 512 tokens, 1 of 4,096), at least one, measured on the
    first example.

    Args:
        inputs, targets: the sample batch of raw inputs (and targets where
            the model's attention depends on them: a translator's).
        log_dir: TensorBoard folder, or None.
    """

    def __init__(self, inputs, targets=None, log_dir=None):
        super().__init__()
        self.inputs, self.targets = inputs, targets
        self.log_dir = log_dir
        self.statistics = None
        self._writer = None
        self._sized = None

    def on_epoch_end(self, epoch, logs=None):
        layers = None
        if self._sized is None:
            layers = self.model.attention_summary(*self._first(1))
            queries = max(int(layer.rows.max()) for layer in layers)
            self._sized = max(1, min(len(self.inputs), ATTENTION_PAIRS // max(1, queries) ** 2))
        if layers is None or self._sized > 1:  # the first example alone is already read
            layers = self.model.attention_summary(*self._first(self._sized))
        self.statistics = reports.attention_statistics(layers)
        print(reports.format_attention_statistics(self.statistics), flush=True)
        if self.log_dir is not None:
            self._log(epoch, layers)

    def _first(self, count):
        return self.inputs[:count], None if self.targets is None else self.targets[:count]

    def _log(self, epoch, layers):
        import tensorflow as tf

        if self._writer is None:
            self._writer = tf.summary.create_file_writer(str(Path(self.log_dir) / "attention"))
        with self._writer.as_default(step=epoch):
            tf.summary.scalar("attention/mean_entropy", self.statistics["mean_entropy"])
            tf.summary.scalar("attention/collapsed_share", self.statistics["collapsed_share"])
            for layer, heads in zip(layers, self.statistics["layers"].values()):
                tag = layer.name.replace(" ", "_")
                for head, values in enumerate(heads, 1):
                    tf.summary.scalar(f"attention_entropy/{tag}/head_{head}", values["entropy"])
                # One image per head, scaled from zero to its largest weight.
                heads_maps = layer.pooled
                peaks = np.maximum(heads_maps.max(axis=(1, 2), keepdims=True), 1e-9)
                tf.summary.image(f"attention_maps/{tag}", (heads_maps / peaks)[..., None],
                                 max_outputs=heads_maps.shape[0])
        self._writer.flush()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None


# The sample batch the attention statistics are computed on: at most this
# many examples, and as many as hold this many query-key pairs per head.
ATTENTION_SAMPLE = 8
ATTENTION_PAIRS = ATTENTION_SAMPLE * 512 ** 2


def monitoring_callbacks(model, run, validation, log_dir):
    """TensorBoard logs into `log_dir`, profiled steps and attention
    statistics, as `run` asks."""
    callbacks = []
    if log_dir is not None:
        callbacks.append(keras.callbacks.TensorBoard(
            str(log_dir), profile_batch=run.profile_steps or 0))
    if run.attention_statistics:
        inputs, targets = validation
        callbacks.append(AttentionMonitor(
            model.raw_array(inputs)[:ATTENTION_SAMPLE],
            model.raw_array(targets)[:ATTENTION_SAMPLE] if model.attention_needs_targets else None,
            log_dir,
        ))
    return callbacks


def reproduce_preset(train, target):
    """A preset recipe: runs `train(work_folder)` (a training job writing
    `work_folder/preset`) with deterministic ops, then puts that preset at
    `target` atomically.

    Returns:
        The job's `TrainingResult`.
    """
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()
    with tempfile.TemporaryDirectory() as work:
        result = train(work)
        with replaced_directory(target) as staging:
            shutil.copytree(Path(work) / "preset", staging, dirs_exist_ok=True)
    digest = hashlib.sha256((Path(target) / "metadata.json").read_bytes()).hexdigest()
    print(f"wrote {target}; {result.score}; metadata.json SHA-256 {digest} (a shipped "
          "preset's goes into zoo.presets.SHIPPED_METADATA_SHA256)")
    return result


def recipe_command(description, default_target, train, argv=None):
    """The command line of a preset recipe module: `reproduce_preset(train,
    --out FOLDER)`, by default into the shipped preset's folder."""
    import argparse

    parser = argparse.ArgumentParser(description=description.strip().splitlines()[0])
    parser.add_argument("--out", help=f"preset folder (default: {default_target})")
    out = parser.parse_args(argv).out
    return reproduce_preset(train, Path(out) if out else Path(default_target))


def announce_body(model_class, preset):
    """Prints the `body:` line: which preset or checkpoint a run starts from."""
    from zoo.sources import description

    print(f"body: {preset} ({description(preset, model_class.named_presets())})", flush=True)


def preset_label_order(model_class, preset, names):
    """For a classifier preset of `model_class`'s own kind, its label order
    when the data has the same labels, so that fine-tuning keeps the
    pretrained head; else (a body, or other labels) `names`."""
    if not model_class.is_own_preset(preset):
        return names
    preset_labels = model_class.preset_labels(model_class.load_verified_preset(preset))
    return preset_labels if set(preset_labels) == set(names) else names
