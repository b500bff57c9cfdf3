"""Where and how fast a training job runs, apart from what it learns.

Four pieces, each readable alone:

- `TrainingRun`: the settings (strategy name, precision, XLA, checkpoints,
  TensorBoard, what the job writes), checked when created.
- `precision_policy`: Keras's global dtype policy for a block, restored
  afterwards.
- `refuse_unsupported_precision` and `refuse_unsupported_xla`: the
  combinations this TensorFlow and Keras cannot run, refused before any
  work with the reason and what to use instead.
- `process_outputs`: the chief/worker split. In a cluster every worker runs
  the whole job (its steps are collective), but only the chief writes into
  the output folder.

Imports Keras and `zoo.distribute`; nothing from the models.
"""

import contextlib
import dataclasses
import functools
import tempfile
from pathlib import Path

import keras

from zoo import distribute
from zoo.keras_compat import in_multi_worker_mode

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
JIT_COMPILE = ("auto", "true", "false")
# Steps per call of the compiled train function on a TPU: the host loop
# would otherwise dominate small steps.
TPU_STEPS_PER_EXECUTION = 32


@dataclasses.dataclass(frozen=True)
class TrainingRun:
    """How a zoo training job runs: the things that change where and how
    fast it trains, not what it learns (that is `zoo.training.Job`).

    Args:
        strategy: a name for `zoo.distribute.get_strategy`.
        precision: `"float32"`, `"mixed_float16"` (with Keras's dynamic loss
            scaling) or `"mixed_bfloat16"`: the dtype policy the model is
            built under.
        jit_compile: `"auto"` (Keras's choice, or the model's own rule),
            `"true"` or `"false"`: XLA for the train step.
        checkpoint_every: a checkpoint every this many steps as well as at
            epochs' ends; None for epochs' ends only.
        checkpoint_minutes: the least time between two checkpoints at
            epochs' ends (training's end is always one); 0 for every epoch.
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

    Example:

    ```python
    run = TrainingRun(precision="mixed_bfloat16", checkpoint_every=500)
    with run.scope():
        model = TextClassifier(labels=["neg", "pos"])
        run.prepare(model)
        model.compile(optimizer="adamw", **run.compile_options())
    ```
    """

    strategy: str = "auto"
    precision: str = "float32"
    jit_compile: object = "auto"
    checkpoint_every: int = None
    checkpoint_minutes: float = 5
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
        if (isinstance(self.checkpoint_minutes, bool)
                or not isinstance(self.checkpoint_minutes, (int, float))
                or not 0 <= self.checkpoint_minutes < float("inf")):
            raise ValueError(f"checkpoint_minutes must be a number of minutes from 0. "
                             f"Received: {self.checkpoint_minutes!r}.")
        if self.profile_steps is not None:
            steps = tuple(self.profile_steps)
            if len(steps) != 2 or not all(isinstance(s, int) and s >= 1 for s in steps) \
                    or steps[0] > steps[1]:
                raise ValueError(
                    "profile_steps must be two step numbers `first,last` with "
                    f"1 <= first <= last. Received: {self.profile_steps!r}.")
            if self.tensorboard is None:
                raise ValueError(
                    "--profile-steps writes into the TensorBoard folder: give --tensorboard DIR.")
            # The frozen dataclass's own way to normalize a field.
            object.__setattr__(self, "profile_steps", steps)
        distribute.check_strategy_name(self.strategy)

    @functools.cached_property
    def distribution(self):
        """The `tf.distribute` strategy, created on first use (a cluster's
        can be created once per process) and announced once."""
        strategy = distribute.get_strategy(self.strategy)
        print(f"strategy: {distribute.describe(strategy)}", flush=True)
        return strategy

    @contextlib.contextmanager
    def scope(self):
        """Builds under the strategy and the precision policy; the global
        policy is restored afterwards, so later models (a preset's twin, a
        reloaded copy) are float32."""
        refuse_unsupported_precision(self.distribution, self.precision)
        with precision_policy(self.precision), self.distribution.scope():
            yield self.distribution

    def compile_options(self, steps_per_execution=1):
        """`compile` arguments: XLA choice and steps per execution."""
        options = {"steps_per_execution": steps_per_execution}
        if distribute.is_tpu(self.distribution):
            options["steps_per_execution"] = max(steps_per_execution, TPU_STEPS_PER_EXECUTION)
        if self.jit_compile != "auto":
            options["jit_compile"] = self.jit_compile in (True, "true")
        if options.get("jit_compile"):
            refuse_unsupported_xla(self.distribution)
        return options

    def prepare(self, model):
        """Model settings the hardware needs (static shapes on a TPU)."""
        model.static_shapes = distribute.is_tpu(self.distribution)
        return model


@contextlib.contextmanager
def precision_policy(precision):
    """Keras's global dtype policy is `precision` inside the block and what
    it was before afterwards, however the block ends.

    Args:
        precision: a Keras dtype policy name (`"mixed_bfloat16"`).
    """
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


# Refusals: each names what this TensorFlow and Keras cannot do, how it
# failed when tried, and what to use instead.

def refuse_unsupported_precision(strategy, precision):
    """Raises `ValueError` for a precision the strategy cannot train in."""
    if precision == "mixed_float16" and in_multi_worker_mode(strategy):
        raise ValueError(
            "--precision mixed_float16 is not supported across workers: with Keras 3.15's "
            "loss scaling under MultiWorkerMirroredStrategy both workers stalled, idle, "
            "before finishing an epoch (bench/scale.py). Use --precision mixed_bfloat16, "
            "which needs no loss scaling, or float32.")


def refuse_unsupported_xla(strategy):
    """Raises `ValueError` where an XLA-compiled step cannot reach every
    replica of `strategy`."""
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


@dataclasses.dataclass(frozen=True)
class ProcessOutputs:
    """Where this process of a run writes.

    Attributes:
        folder: the output folder on the chief; on another worker a
            temporary folder, removed when the job ends.
        backup: the checkpoints this process resumes from:
            `out/backup`, or `out/backup/<task>` for each worker of a cluster.
        tensorboard: the TensorBoard folder (a worker's own inside its
            temporary folder), or None.
        is_chief: whether `folder` is the output folder.
    """

    folder: Path
    backup: Path
    tensorboard: Path
    is_chief: bool


@contextlib.contextmanager
def process_outputs(run, out):
    """The chief/worker split of a run writing into `out`: yields this
    process's `ProcessOutputs`."""
    out = Path(out)
    strategy = run.distribution
    worker = distribute.worker_name(strategy)
    backup = out / "backup" / worker if worker else out / "backup"
    if distribute.is_chief(strategy):
        out.mkdir(parents=True, exist_ok=True)
        yield ProcessOutputs(out, backup, Path(run.tensorboard) if run.tensorboard else None,
                             is_chief=True)
        return
    with tempfile.TemporaryDirectory(prefix=f"zoo-{worker}-") as scratch:
        scratch = Path(scratch)
        yield ProcessOutputs(scratch, backup, scratch / "tensorboard" if run.tensorboard else None,
                             is_chief=False)
