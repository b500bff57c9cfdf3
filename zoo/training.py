"""The training job every zoo model shares: fit, report, figures, preset, export.

A model's `train_*` function loads its data, builds (or loads) the model under
the strategy and hands it here; what is written under `out/` is the same for
every model:

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

import contextlib
import functools
import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from zoo import distribute
from zoo.keras_compat import in_multi_worker_mode
from zoo import report as reports
from zoo.publishing import replaced_directory, write_text_atomic

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
JIT_COMPILE = ("auto", "true", "false")
# Steps per call of the compiled train function on a TPU: the host loop
# would otherwise dominate small steps.
TPU_STEPS_PER_EXECUTION = 32


@dataclass
class TrainingRun:
    """How a zoo training job runs: the things that change where and how
    fast it trains, not what it learns.

    Args:
        strategy: a name for `zoo.distribute.get_strategy`.
        precision: `"float32"`, `"mixed_float16"` (with Keras's dynamic loss
            scaling) or `"mixed_bfloat16"`: the dtype policy the model is
            built under.
        jit_compile: `"auto"` (Keras's choice, or the model's own rule),
            `"true"` or `"false"`: XLA for the train step.
        checkpoint_every: a checkpoint every this many steps as well as at
            each epoch's end; None for epochs only.
        tensorboard: folder for TensorBoard logs (losses, attention
            statistics and maps, profiles), or None.
        profile_steps: `(first, last)` steps profiled with the TensorFlow
            profiler into the TensorBoard folder.
        attention_statistics: log each attention head's entropy and
            collapse on a fixed sample batch at each epoch's end.
        export, figures: whether the job exports a SavedModel and draws its
            figures (a hyperparameter search's trials do neither).
        restart: discard the output folder's checkpoint instead of resuming
            from it (which is refused when it belongs to another run).
    """

    strategy: str = "auto"
    precision: str = "float32"
    jit_compile: object = "auto"
    checkpoint_every: int = None
    tensorboard: str = None
    profile_steps: tuple = None
    attention_statistics: bool = True
    export: bool = True
    figures: bool = True
    restart: bool = False

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"Unknown precision {self.precision!r}; expected one of {PRECISIONS}.")
        if isinstance(self.jit_compile, str):
            if self.jit_compile not in JIT_COMPILE:
                raise ValueError(
                    f"jit_compile must be one of {JIT_COMPILE}. Received: {self.jit_compile!r}.")
        elif not isinstance(self.jit_compile, bool):
            raise TypeError(f"jit_compile must be a bool or one of {JIT_COMPILE}. "
                            f"Received: {self.jit_compile!r}.")
        if self.checkpoint_every is not None and self.checkpoint_every < 1:
            raise ValueError(
                f"checkpoint_every must be a positive number of steps. "
                f"Received: {self.checkpoint_every}.")
        if self.profile_steps is not None:
            steps = tuple(self.profile_steps)
            if len(steps) != 2 or not all(isinstance(s, int) and s >= 1 for s in steps) \
                    or steps[0] > steps[1]:
                raise ValueError(
                    "profile_steps must be two step numbers `first,last` with "
                    f"1 <= first <= last. Received: {self.profile_steps!r}.")
            self.profile_steps = steps
        distribute.check_strategy_name(self.strategy)

    @functools.cached_property
    def distribution(self):
        """The strategy, created on first use and announced once."""
        strategy = distribute.get_strategy(self.strategy)
        print(f"strategy: {distribute.describe(strategy)}", flush=True)
        return strategy

    @contextlib.contextmanager
    def scope(self):
        """Builds under the strategy and the precision policy; the global
        policy is restored afterwards, so later models (a preset's twin, a
        reloaded copy) are float32."""
        if self.precision == "mixed_float16" and in_multi_worker_mode(
                self.distribution):
            raise ValueError(
                "--precision mixed_float16 is not supported across workers: with Keras 3.15's "
                "loss scaling under MultiWorkerMirroredStrategy both workers stalled, idle, "
                "before finishing an epoch (bench/scale.py). Use --precision mixed_bfloat16, "
                "which needs no loss scaling, or float32.")
        previous = keras.config.dtype_policy()
        keras.config.set_dtype_policy(self.precision)
        try:
            with self.distribution.scope():
                yield self.distribution
        finally:
            keras.config.set_dtype_policy(previous)

    def compile_options(self, steps_per_execution=1):
        """`compile` arguments: XLA choice and steps per execution."""
        options = {"steps_per_execution": steps_per_execution}
        if distribute.is_tpu(self.distribution):
            options["steps_per_execution"] = max(steps_per_execution, TPU_STEPS_PER_EXECUTION)
        if self.jit_compile != "auto":
            options["jit_compile"] = self.jit_compile in (True, "true")
        if options.get("jit_compile"):
            self._check_xla_reaches_every_replica()
        return options

    def _check_xla_reaches_every_replica(self):
        strategy = self.distribution
        if strategy.num_replicas_in_sync == 1:
            return
        devices = strategy.extended.worker_devices
        if not all("CPU" in device.upper() for device in devices):
            return
        if len(devices) > 1:
            raise ValueError(
                f"--jit-compile true cannot run over {len(devices)} CPU devices of one process: "
                "XLA compiles the step for one device and then cannot reach the other replicas' "
                "variables (TensorFlow 2.21). Use --jit-compile false or auto here.")
        if in_multi_worker_mode(strategy):
            raise ValueError(
                "--jit-compile true cannot run across CPU workers: the optimizer gathers the "
                "embeddings' sparse gradients with CollectiveGatherV2, which XLA's CPU backend "
                "does not implement (TensorFlow 2.21). Use --jit-compile false or auto here.")

    def prepare(self, model):
        """Model settings the hardware needs (static shapes on a TPU)."""
        model.static_shapes = distribute.is_tpu(self.distribution)
        return model

    @property
    def is_chief(self):
        return distribute.is_chief(self.distribution)

    def worker_name(self):
        return distribute.worker_name(self.distribution)


def dropout_override(dropout):
    """`{"dropout": dropout}` when given (the command line's `--dropout`), else `{}`."""
    if dropout is None:
        return {}
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1). Received: {dropout}.")
    return {"dropout": dropout}


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


class TrainingCheckpoint(keras.callbacks.Callback):
    """Backs up the training state every `every_steps` steps and at each
    epoch's end, so that a killed run resumes where it stopped.

    A checkpoint is a folder `step-<N>` holding the weights with the
    optimizer's state and `state.json` (epoch, batches done in it, total
    steps, history so far per epoch and per step); it is written under a temporary name and
    renamed into place, so a kill while writing leaves the previous one
    whole. The two newest are kept: a resume falls back to the older when
    the newer cannot be read.

    A checkpoint also records the run's `fingerprint` (`run_fingerprint`:
    the training data and the settings), and a run resumes only from its
    own: another run's checkpoint is refused, naming what differs.

    Args:
        directory: the backup folder (its own, nothing else in it).
        every_steps: steps between checkpoints; None for epoch ends only.
        fingerprint: `{"data": sha256, "settings": {...}}` of this run.
    """

    STATE_FILE = "state.json"
    WEIGHTS_FILE = "state.weights.h5"

    def __init__(self, directory, every_steps=None, fingerprint=None):
        super().__init__()
        self.directory = Path(directory)
        self.every_steps = every_steps
        self.fingerprint = fingerprint
        self.history = {}
        self.step_history = StepHistory()
        self._epoch = 0
        self._skipped = 0

    def restore(self, model):
        """Loads the newest readable checkpoint into `model` (built under its
        strategy); returns its state, or None when there is none."""
        for unfinished in self.directory.glob(".writing-*"):  # killed while writing
            shutil.rmtree(unfinished, ignore_errors=True)
        for folder in reversed(self._checkpoints()):
            try:
                state = json.loads((folder / self.STATE_FILE).read_text())
                self._check_same_run(state.get("fingerprint"))
                if model.optimizer is not None and not model.optimizer.built:
                    model.optimizer.build(model.trainable_variables)
                step_history = StepHistory(state.get("step_history"))
                model.load_weights(str(folder / self.WEIGHTS_FILE))
            except RunMismatchError:
                raise
            except (OSError, ValueError, KeyError) as error:
                print(f"checkpoint {folder} is unreadable ({error}); trying an older one")
                continue
            self.history = state["history"]
            self.step_history = step_history
            return state
        return None

    def _check_same_run(self, theirs):
        ours = self.fingerprint
        if ours is None or theirs == ours:
            return
        theirs = theirs or {}
        differences = []
        if theirs.get("data") != ours["data"]:
            differences.append("other training data")
        settings = theirs.get("settings", {})
        differences += [f"{name} {settings.get(name)!r} -> {value!r}"
                        for name, value in ours["settings"].items()
                        if settings.get(name) != value and name != "network"]
        if settings.get("network") != ours["settings"]["network"]:
            differences.append("another network")
        raise RunMismatchError(
            f"{self.directory} holds the checkpoint of another run "
            f"({'; '.join(differences) or 'written by an earlier version'}); resuming would "
            "continue its weights on this run: pass --restart (TrainingRun(restart=True)) to "
            "discard it, or train into another --out.")

    def start(self, epoch, skipped_batches):
        """Tells the callback where the coming `fit` call starts."""
        self._epoch, self._skipped = epoch, skipped_batches

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_begin(self, logs=None):
        self._last_saved = self._steps()

    def on_train_batch_end(self, batch, logs=None):
        steps = self._steps()
        self.step_history.record(steps, logs)
        # `batch` is the last of the steps one call ran (steps_per_execution);
        # an epoch's last batch is saved as the epoch's end.
        if batch + 1 >= self.params.get("steps", float("inf")):
            return
        if self.every_steps and steps - self._last_saved >= self.every_steps:
            self._save(self._epoch, self._skipped + batch + 1)

    def on_epoch_end(self, epoch, logs=None):
        for name, value in (logs or {}).items():
            self.history.setdefault(name, []).append(float(value))
        self.step_history.end_epoch(self._steps())
        self._skipped = 0
        self._save(epoch + 1, 0)

    def _steps(self):
        return int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))

    def _save(self, epoch, batches_done):
        steps = self._last_saved = self._steps()
        target = self.directory / f"step-{steps:09d}"
        if target.exists():
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        # Weights and optimizer state, with room for the file format: HDF5
        # crashed the process (SIGSEGV) when the disk filled while writing.
        state_bytes = sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize
                          for v in [*self.model.weights, *self.model.optimizer.variables])
        check_free_space(self.directory, int(state_bytes * 1.1) + (1 << 20))
        staging = Path(tempfile.mkdtemp(prefix=".writing-", dir=self.directory))
        try:
            self.model.save_weights(str(staging / self.WEIGHTS_FILE))
            (staging / self.STATE_FILE).write_text(json.dumps({
                "epoch": epoch, "batches_done": batches_done, "steps": steps,
                "history": self.history, "step_history": self.step_history.as_dict(),
                "fingerprint": self.fingerprint,
            }))
            os.replace(staging, target)
        except OSError as error:
            # The disk filled (or a quota or file-size limit was met) after
            # the free-space check: h5py's message runs to several lines.
            reason = os.strerror(error.errno) if error.errno else str(error).splitlines()[0]
            raise ValueError(
                f"{self.directory}: writing the checkpoint at step {steps} failed ({reason}); "
                f"{shutil.disk_usage(self.directory).free / 2**20:.1f} MB free. "
                + ("The previous checkpoint is kept. " if self._checkpoints() else "")
                + "Free some space and run the same command again to resume."
            ) from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        where = (f"epoch {epoch + 1}, after batch {batches_done}" if batches_done
                 else f"end of epoch {epoch}")
        print(f"\ncheckpoint: step {steps} ({where})", flush=True)
        for old in self._checkpoints()[:-2]:
            shutil.rmtree(old, ignore_errors=True)

    def _checkpoints(self):
        if not self.directory.is_dir():
            return []
        return sorted(p for p in self.directory.iterdir()
                      if re.fullmatch(r"step-\d{9}", p.name) and p.is_dir())


class StepHistory:
    """The training metrics Keras reports after each step (each epoch's mean
    so far), for the curves of a run too short for per-epoch points. At most
    `max_points` are kept: past that, every other point is dropped and only
    every `stride`-th step (doubled) is recorded, so a long run's record
    stays small in every checkpoint."""

    def __init__(self, saved=None, max_points=1000):
        saved = saved or {}
        # `saved` comes from a checkpoint's state.json: a file edited by hand
        # or cut short is refused (and the checkpoint read as unreadable).
        try:
            self.stride = int(saved.get("stride", 1))
            self.epoch_ends = [int(step) for step in saved.get("epoch_ends", [])]
            self.metrics = {str(name): [float(value) for value in values]
                            for name, values in saved.get("metrics", {}).items()}
        except (AttributeError, TypeError, ValueError) as error:
            raise ValueError(f"malformed step history ({error})") from None
        lengths = {len(values) for values in self.metrics.values()}
        if self.stride < 1 or len(lengths) > 1:
            raise ValueError(f"malformed step history (stride {self.stride}, "
                             f"metric lengths {sorted(lengths)})")
        self.max_points = max_points

    def record(self, step, logs):
        if step % self.stride or not logs:
            return
        self.metrics.setdefault("step", []).append(step)
        for name, value in logs.items():
            if not name.startswith("val_"):
                self.metrics.setdefault(name, []).append(float(value))
        if len(self.metrics["step"]) > self.max_points:
            self.metrics = {name: values[1::2] for name, values in self.metrics.items()}
            self.stride *= 2

    def end_epoch(self, step):
        self.epoch_ends.append(step)

    def as_dict(self):
        return {"stride": self.stride, "epoch_ends": self.epoch_ends, "metrics": self.metrics}


LOCK_FILE = ".lock"


def check_free_space(folder, needed):
    """Refuses to write `needed` bytes into `folder` when its file system has
    less free: one message naming the folder and the free space, and every
    file already there (the previous checkpoint) kept."""
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise ValueError(f"{folder}: {free / 2**20:.1f} MB free, and the checkpoint needs "
                         f"{needed / 2**20:.1f} MB; the previous checkpoint is kept. Free some "
                         "space and run the same command again to resume.")


class RunMismatchError(ValueError):
    """A checkpoint that belongs to another run (not an unreadable one)."""


def run_fingerprint(model, train, epochs, batch_size, training_metadata=None):
    """What makes a run itself: the SHA-256 of its training inputs and
    labels, and its settings (the network's configuration, epochs, batch
    size, and the job's `training_metadata`: data path, learning rate,
    seed). A checkpoint resumes only into the run with the same."""
    digest = hashlib.sha256()
    for column in train:
        for value in column:
            raw = value if isinstance(value, bytes) else (
                np.ascontiguousarray(value).tobytes() if isinstance(value, np.ndarray)
                else str(value).encode("utf-8"))
            digest.update(len(raw).to_bytes(8, "little"))
            digest.update(raw)
    architecture = model.architecture() if hasattr(model, "architecture") else {}
    settings = {"epochs": int(epochs), "batch_size": int(batch_size),
                **json.loads(json.dumps(training_metadata or {}, default=str)),
                "network": json.loads(json.dumps(architecture, sort_keys=True, default=str))}
    return {"data": digest.hexdigest(), "settings": settings}


@contextlib.contextmanager
def exclusive_folder(folder):
    """Holds a lock on `folder` (the file `.lock` in it) for the block: a
    second training run into the same backup folder is refused, naming the
    process that holds it, instead of resuming from the first run's
    checkpoint while it is written. The operating system releases the lock
    when the process ends, however it ends."""
    import fcntl

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock_path = folder / LOCK_FILE
    handle = open(lock_path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise ValueError(f"{folder.parent} is in use by another training run (process "
                         f"{holder}); wait for it to end, or train into another --out.") from None
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield
    finally:
        handle.close()  # releases the lock


class StepProgress(keras.callbacks.ProgbarLogger):
    """Keras's progress bar, counting the steps that ran. With
    `steps_per_execution` Keras reports the last step each call could have
    run, so an epoch of 5 steps run 8 at a time ended at `8/5`, with a bar
    past its end and a negative time left."""

    def on_train_batch_end(self, batch, logs=None):
        last = batch if self.target is None else min(batch, self.target - 1)
        super().on_train_batch_end(last, logs)


def resumable_fit(model, train, validation, epochs, batch_size, checkpoint, callbacks=(),
                  verbose="auto", seed=0):
    """`model.fit` that resumes from `checkpoint`'s newest state: the rest
    of an interrupted epoch (its remaining batches, in the same order),
    then the remaining epochs.

    Returns:
        `(history, steps)`: the history of every epoch (those before the
        interruption included) and `{"total", "resumed_at", "this_run"}`.
        The metrics after each step are in `checkpoint.step_history`.
    """
    with model.distribute_strategy.scope():
        state = checkpoint.restore(model)
    epoch, skipped = (state["epoch"], state["batches_done"]) if state else (0, 0)
    resumed_at = state["steps"] if state else 0
    if state:
        print(f"resuming from the checkpoint at step {resumed_at}: epoch {epoch + 1}"
              f"{f', after batch {skipped}' if skipped else ''}", flush=True)
    fit = functools.partial(
        model.fit, train[0], train[1], validation_data=validation, batch_size=batch_size,
        verbose=verbose, seed=seed, callbacks=[checkpoint, StepProgress(), *callbacks],
    )
    if skipped:
        checkpoint.start(epoch, skipped)
        fit(initial_epoch=epoch, epochs=epochs, skip_batches=skipped)
        epoch += 1
    if epoch < epochs:
        checkpoint.start(epoch, 0)
        fit(initial_epoch=epoch, epochs=epochs)
    total = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
    return checkpoint.history, {"total": total, "resumed_at": resumed_at,
                                "this_run": total - resumed_at}


def train_and_report(model, train, validation, test, out, epochs, batch_size,
                     verbose="auto", callbacks=(), training_metadata=None,
                     summary_extra=None, evaluation_options=None, export_options=None,
                     figure_options=None, run=None, seed=0):
    """Fits `model` (compiled under `run`), reports on `test` (or
    `validation` when `test` is None), and writes everything listed in the
    module docstring. `evaluation_options`, `export_options` and
    `figure_options` go to the model's `evaluation_report`, `export` and
    `save_attention_figure`.

    In a cluster every worker runs all of it (the steps are collective) but
    only the chief writes into `out`; the others write into temporary
    folders that are removed. Each worker keeps its own backup,
    `out/backup/<task>`, to rejoin from after a restart.

    Returns:
        The summary dict also written to `report.json`.
    """
    run = run or TrainingRun()
    out = Path(out)
    worker = run.worker_name()
    backup = out / "backup" / worker if worker else out / "backup"
    if run.is_chief:
        out.mkdir(parents=True, exist_ok=True)
        return _train_and_report(model, train, validation, test, out, backup, epochs,
                                 batch_size, verbose, callbacks, training_metadata,
                                 summary_extra, evaluation_options, export_options,
                                 figure_options, run, seed)
    with tempfile.TemporaryDirectory(prefix=f"zoo-{worker}-") as scratch:
        return _train_and_report(model, train, validation, test, Path(scratch), backup, epochs,
                                 batch_size, verbose, callbacks, training_metadata,
                                 summary_extra, evaluation_options, export_options,
                                 figure_options, run, seed)


def _train_and_report(model, train, validation, test, out, backup, epochs, batch_size, verbose,
                      callbacks, training_metadata, summary_extra, evaluation_options,
                      export_options, figure_options, run, seed):
    with exclusive_folder(backup):
        return _train_and_report_locked(
            model, train, validation, test, out, backup, epochs, batch_size, verbose, callbacks,
            training_metadata, summary_extra, evaluation_options, export_options, figure_options,
            run, seed)


def _train_and_report_locked(model, train, validation, test, out, backup, epochs, batch_size,
                             verbose, callbacks, training_metadata, summary_extra,
                             evaluation_options, export_options, figure_options, run, seed):
    if run.restart:
        # The lock file stays: removing it would let a third run lock a new one.
        discarded = [p for p in backup.iterdir() if p.name != LOCK_FILE]
        if discarded:
            print(f"--restart: discarding the checkpoint in {backup}", flush=True)
        for path in discarded:
            shutil.rmtree(path, ignore_errors=True)
    checkpoint = TrainingCheckpoint(
        backup, run.checkpoint_every,
        run_fingerprint(model, train, epochs, batch_size, training_metadata))
    monitoring = monitoring_callbacks(model, run, validation, out)
    history, steps = resumable_fit(
        model, train, validation, epochs, batch_size, checkpoint, verbose=verbose, seed=seed,
        callbacks=[*monitoring, *callbacks],
    )
    step_history = checkpoint.step_history.as_dict()
    # The last epoch's line, already printed by the monitor, goes in the report.
    attention = next((c.statistics for c in monitoring if isinstance(c, AttentionMonitor)), None)
    evaluated_on, (inputs, labels) = (
        ("test", test) if test is not None else ("validation", validation)
    )
    summary = model.evaluation_report(inputs, labels, batch_size=batch_size,
                                      **(evaluation_options or {}))
    print(f"\nEvaluation on the {evaluated_on} set ({len(inputs)} examples):")
    print(model.format_evaluation(summary))

    if run.figures:
        reports.plot_history(history, out / "training_curves.png", step_history)
        model.save_attention_figure(validation[0], out / "attention.png",
                                    **(figure_options or {}))
    summary.update({
        "evaluated_on": evaluated_on,
        "examples": {"train": len(train[0]), "validation": len(validation[0]),
                     "evaluated": len(inputs)},
        "epochs": epochs,
        "steps": steps,
        "strategy": distribute.describe(run.distribution),
        "precision": run.precision,
        "wrote_outputs": run.is_chief,
        "attention": attention,
        "history": history,
        "step_history": step_history,
        **(summary_extra or {}),
    })
    model.save_to_preset(out / "preset", metadata={"training": {
        **(training_metadata or {}), "epochs": epochs, "batch_size": batch_size,
        f"{evaluated_on}_{summary['headline']}": summary[summary["headline"]],
    }})
    if run.export:
        summary["export"] = str(model.export(out / "export", **(export_options or {})))
    write_text_atomic(out / "report.json", json.dumps(summary, indent=2))
    # Done: the backup would only make a rerun skip its training.
    shutil.rmtree(backup, ignore_errors=True)
    if backup.parent.name == "backup" and not any(backup.parent.iterdir()):
        backup.parent.rmdir()
    return summary


class AttentionMonitor(keras.callbacks.Callback):
    """Logs, at each epoch's end, every attention head's normalized entropy
    and the share of heads that have collapsed (near one-hot or near
    uniform; see `zoo.report.attention_statistics`) on a fixed sample
    batch: one line on stdout, and with `log_dir` TensorBoard scalars and
    images of the sample's first example (every head of every layer).

    Args:
        inputs, targets: the fixed sample batch of raw inputs (and targets
            where the model's attention depends on them: a translator's).
        log_dir: TensorBoard folder, or None.
    """

    def __init__(self, inputs, targets=None, log_dir=None):
        super().__init__()
        self.inputs, self.targets = inputs, targets
        self.log_dir = log_dir
        self.statistics = None
        self._writer = None

    def on_epoch_end(self, epoch, logs=None):
        maps = self.model.attention_maps(self.inputs, self.targets)
        self.statistics = reports.attention_statistics(maps)
        print(reports.format_attention_statistics(self.statistics), flush=True)
        if self.log_dir is not None:
            self._log(epoch, maps)

    def _log(self, epoch, maps):
        import tensorflow as tf

        if self._writer is None:
            self._writer = tf.summary.create_file_writer(str(Path(self.log_dir) / "attention"))
        with self._writer.as_default(step=epoch):
            tf.summary.scalar("attention/mean_entropy", self.statistics["mean_entropy"])
            tf.summary.scalar("attention/collapsed_share", self.statistics["collapsed_share"])
            for (name, weights, _, _), heads in zip(maps, self.statistics["layers"].values()):
                tag = name.replace(" ", "_")
                for head, values in enumerate(heads, 1):
                    tf.summary.scalar(f"attention_entropy/{tag}/head_{head}", values["entropy"])
                # One image per head, scaled from zero to its largest weight.
                heads_maps = np.asarray(weights, np.float32)[0]
                peaks = np.maximum(heads_maps.max(axis=(1, 2), keepdims=True), 1e-9)
                tf.summary.image(f"attention_maps/{tag}", (heads_maps / peaks)[..., None],
                                 max_outputs=heads_maps.shape[0])
        self._writer.flush()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None


# The sample batch the attention statistics are computed on.
ATTENTION_SAMPLE = 8


def monitoring_callbacks(model, run, validation, out):
    """TensorBoard logs, profiled steps and attention statistics, as `run`
    asks; a non-chief worker logs into `out` (its temporary folder)."""
    callbacks = []
    log_dir = None
    if run.tensorboard:
        log_dir = Path(run.tensorboard) if run.is_chief else Path(out) / "tensorboard"
        callbacks.append(keras.callbacks.TensorBoard(
            str(log_dir), profile_batch=run.profile_steps or 0))
    elif run.profile_steps:
        raise ValueError("--profile-steps writes into the TensorBoard folder: give --tensorboard DIR.")
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
        The job's summary.
    """
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()
    with tempfile.TemporaryDirectory() as work:
        summary = train(work)
        with replaced_directory(target) as staging:
            shutil.copytree(Path(work) / "preset", staging, dirs_exist_ok=True)
    digest = hashlib.sha256((Path(target) / "metadata.json").read_bytes()).hexdigest()
    print(f"wrote {target}; {summary['evaluated_on']} {summary['headline']} "
          f"{summary[summary['headline']]:.4f}; metadata.json SHA-256 {digest} (a shipped "
          "preset's goes into zoo.presets.SHIPPED_METADATA_SHA256)")
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
