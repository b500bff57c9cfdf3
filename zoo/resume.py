"""Resuming an interrupted training run, and only into the run it belongs to.

- `TrainingCheckpoint`: the callback that backs up weights, optimizer state
  and history every N steps, and at an epoch's end every few minutes and
  when training ends (atomically, the two newest kept), and restores the
  newest readable one.
- `run_fingerprint`: what makes a run itself (its data and settings); a
  checkpoint of another run is refused (`RunMismatchError`).
- `exclusive_folder`: one training process per backup folder.
- `resumable_fit`: `model.fit` that starts where the checkpoint stopped, in
  the middle of an epoch included.
- `StopWhenDone`: stops once validation accuracy has stopped improving and
  keeps the best epoch's weights, across a resume too.

Imports Keras, NumPy and `zoo.lora` (a LoRA model's checkpoint holds its
adapters); nothing from the models.
"""

import contextlib
import functools
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import keras
import numpy as np

from zoo.lora import (
    load_training_state, save_training_state, state_path, training_state_variables,
)
from zoo.presets import preset_config


class TrainingCheckpoint(keras.callbacks.Callback):
    """Backs up the training state every `every_steps` steps, and at an
    epoch's end once `every_seconds` have passed since the last backup and
    when training ends, so that a killed run resumes where it stopped.

    A checkpoint is a folder `step-<N>` holding the weights with the
    optimizer's state and `state.json` (epoch, batches done in it, total
    steps, history so far per epoch and per step); it is written under a temporary name and
    renamed into place, so a kill while writing leaves the previous one
    whole. The two newest are kept: a resume falls back to the older when
    the newer cannot be read.

    A checkpoint also records the run's `fingerprint` (`run_fingerprint`:
    the training data and the settings), and a run resumes only from its
    own: another run's checkpoint is refused, naming what differs.

    At most two copies of the model with its optimizer state are on disk,
    and one is written per `every_seconds` of training at most (besides
    `every_steps` and the end): a 40-epoch fine-tuning of MiniLM with AdamW
    (270 MB a copy) wrote 11 GB when every epoch's end was saved.

    Args:
        directory: the backup folder (its own, nothing else in it).
        every_steps: steps between checkpoints; None for epoch ends only.
        fingerprint: `{"data": sha256, "settings": {...}}` of this run.
        every_seconds: the least time between two epoch-end checkpoints;
            None saves every epoch's end.
        on_save: callables run after each checkpoint is written (what must
            be on disk with it, such as the best weights so far).
    """

    STATE_FILE = "state.json"
    WEIGHTS_FILE = "state.weights.h5"

    def __init__(self, directory, every_steps=None, fingerprint=None, every_seconds=None,
                 on_save=()):
        super().__init__()
        self.directory = Path(directory)
        self.every_steps = every_steps
        self.every_seconds = every_seconds
        self.on_save = tuple(on_save)
        self.fingerprint = fingerprint
        self._saved_at = time.monotonic()
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
                load_training_state(model, folder / self.WEIGHTS_FILE)
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
        self._saved_at = time.monotonic()

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
        # An epoch's last batch is never saved as a step (see above): it is
        # saved here when the steps are due, as when the time is.
        due_by_steps = self.every_steps and self._steps() - self._last_saved >= self.every_steps
        if (self.every_seconds is None or due_by_steps
                or time.monotonic() - self._saved_at >= self.every_seconds):
            self._save(epoch + 1, 0)

    def on_train_end(self, logs=None):
        # The end of training (the last epoch, or an early stop): a crash in
        # the report or the export then resumes here, without training again.
        if self._steps() != self._last_saved:
            self._save(self._epoch + 1, 0)

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
                          for v in training_state_variables(self.model))
        check_free_space(self.directory, int(state_bytes * 1.1) + (1 << 20))
        staging = Path(tempfile.mkdtemp(prefix=".writing-", dir=self.directory))
        try:
            save_training_state(self.model, staging / self.WEIGHTS_FILE)
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
        # Mid-epoch, after the bar drawn so far on its line.
        print(f"{chr(10) if batches_done else ''}checkpoint: step {steps} ({where})", flush=True)
        self._saved_at = time.monotonic()
        for old in self._checkpoints()[:-2]:
            shutil.rmtree(old, ignore_errors=True)
        for also in self.on_save:
            also()

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


class StopWhenDone(keras.callbacks.Callback):
    """Stops training once validation accuracy has not improved for
    `patience` epochs, and keeps the best epoch's weights.

    An epoch improves on the best when its validation accuracy is higher,
    or equal with a lower validation loss: on a small validation split the
    accuracy settles early (20 examples: steps of 0.05) while the model
    still gets better.

    The rule spans a resumed run: `resume(history)` takes the epochs a
    checkpoint recorded before the interruption, and the best weights are
    kept in memory and, by `persist` (which `TrainingCheckpoint` calls after
    each checkpoint it writes), in `best_weights_path`: one file, replaced
    atomically, and written only when a checkpoint is.

    Args:
        patience: epochs without improvement before stopping; 0 never stops
            (and every epoch's weights run on to the last, as without it).
        best_weights_path: where the best weights are kept for a resumed
            run (None: in memory only).
        monitor: the validation metric, higher is better.
        tie_breaker: the validation metric, lower is better, that decides
            between epochs of an equal `monitor`.
    """

    def __init__(self, patience, best_weights_path=None, monitor="val_accuracy",
                 tie_breaker="val_loss"):
        super().__init__()
        self.patience = patience
        self.best_weights_path = None if best_weights_path is None else Path(best_weights_path)
        self.monitor, self.tie_breaker = monitor, tie_breaker
        self.best = self.best_epoch = self.last_epoch = self.stopped_epoch = None
        self._best_tie = None
        self._best_weights = None
        self._persisted = True

    def resume(self, history):
        """Takes the epochs a checkpoint recorded before the interruption."""
        ties = history.get(self.tie_breaker, [])
        for epoch, value in enumerate(history.get(self.monitor, [])):
            self._record(epoch, value, ties[epoch] if epoch < len(ties) else None, keep=False)

    def _improves(self, value, tie):
        if value is None or not np.isfinite(value):
            return False
        if self.best is None or value > self.best:
            return True
        return (value == self.best and tie is not None and np.isfinite(tie)
                and (self._best_tie is None or tie < self._best_tie))

    def _record(self, epoch, value, tie=None, keep=True):
        self.last_epoch = epoch
        if not self._improves(value, tie):
            return
        self.best, self.best_epoch, self._best_tie = float(value), epoch, tie
        if keep:
            self._best_weights = self.model.get_weights()
            self._persisted = False

    def persist(self):
        """Writes the best weights so far to `best_weights_path`, once each."""
        if self.best_weights_path is None or self._best_weights is None or self._persisted:
            return
        current = self.model.get_weights()
        self.model.set_weights(self._best_weights)
        staging = self.best_weights_path.with_name(
            f".{os.getpid()}.{self.best_weights_path.name}")
        try:
            written = save_training_state(self.model, staging)
            os.replace(written, state_path(self.model, self.best_weights_path))
        finally:
            self.model.set_weights(current)
        self._persisted = True

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        self._record(epoch, logs.get(self.monitor), logs.get(self.tie_breaker))
        if (self.patience and self.best_epoch is not None
                and epoch - self.best_epoch >= self.patience):
            self.stopped_epoch = epoch
            self.model.stop_training = True

    @property
    def stopped(self):
        return self.stopped_epoch is not None

    def keep_best(self, epochs):
        """Puts back the best epoch's weights when the run stopped early;
        returns the line that says so (None when it did not stop)."""
        if not self.stopped:
            return None
        if self._best_weights is not None:
            self.model.set_weights(self._best_weights)
        elif (self.best_weights_path is not None
              and state_path(self.model, self.best_weights_path).is_file()):
            load_training_state(self.model, self.best_weights_path)
        else:
            return None
        name = self.monitor.removeprefix("val_").replace("_", " ")
        return (f"stopped at epoch {self.stopped_epoch + 1} of {epochs}: validation {name} "
                f"{self.best:.3f} since epoch {self.best_epoch + 1}, whose weights are kept")


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
    architecture = preset_config(model) if hasattr(model, "kind") else {}
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
                  verbose="auto", seed=0, stopper=None):
    """`model.fit` that resumes from `checkpoint`'s newest state: the rest
    of an interrupted epoch (its remaining batches, in the same order),
    then the remaining epochs, or fewer when `stopper` (a `StopWhenDone`)
    ends the run, whose best weights it then puts back.

    Returns:
        `(history, steps)`: the history of every epoch (those before the
        interruption included) and `{"total", "resumed_at", "this_run"}`.
        The metrics after each step are in `checkpoint.step_history`.
    """
    if verbose == "auto":
        # A bar redrawn in place, with colours, on a terminal; else (a file,
        # a pipe) one plain line per epoch, as Keras's `verbose=2` prints.
        verbose = 1 if sys.stdout.isatty() else 2
    with model.distribute_strategy.scope():
        state = checkpoint.restore(model)
    epoch, skipped = (state["epoch"], state["batches_done"]) if state else (0, 0)
    resumed_at = state["steps"] if state else 0
    if state:
        print(f"resuming from the checkpoint at step {resumed_at}: epoch {epoch + 1}"
              f"{f', after batch {skipped}' if skipped else ''}", flush=True)
    stopping = [] if stopper is None else [stopper]
    if stopper is not None:
        stopper.resume(checkpoint.history)
    fit = functools.partial(
        model.fit, train[0], train[1], validation_data=validation, batch_size=batch_size,
        verbose=verbose, seed=seed,
        # The stopper first: a checkpoint written at an epoch's end then
        # persists that epoch's weights when they are the best. The bar
        # before the checkpoint: it finishes the epoch's line (validation
        # included), then the checkpoint's line follows, not a second bar.
        callbacks=[*stopping, StepProgress(), checkpoint, *callbacks],
    )
    if skipped:
        checkpoint.start(epoch, skipped)
        fit(initial_epoch=epoch, epochs=epochs, skip_batches=skipped)
        epoch += 1
    if epoch < epochs and not (stopper is not None and stopper.stopped):
        checkpoint.start(epoch, 0)
        fit(initial_epoch=epoch, epochs=epochs)
    if stopper is not None:
        kept = stopper.keep_best(epochs)
        if kept:
            print(kept, flush=True)
    total = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
    return checkpoint.history, {"total": total, "resumed_at": resumed_at,
                                "this_run": total - resumed_at}
