"""The `tf.distribute` strategy a zoo model trains under, and what a
training job needs to know about it (replicas, which worker writes)."""

import functools
import json
import os

import tensorflow as tf

STRATEGIES = ("auto", "cpu", "mirrored", "multi_worker", "tpu")
REFUSED = {
    "parameter_server": (
        "ParameterServerStrategy is not supported: Keras 3's `fit` needs a "
        "coordinator running `ClusterCoordinator` and a dataset function per "
        "worker, which the zoo's in-memory raw-input pipelines are not; use "
        "'multi_worker' (synchronous all-reduce across machines) instead."
    ),
}


def check_strategy_name(name):
    if name in REFUSED:
        raise ValueError(REFUSED[name])
    if name not in STRATEGIES:
        raise ValueError(f"Unknown strategy {name!r}; expected one of {STRATEGIES}.")


def _cluster():
    """The cluster of `TF_CONFIG`, or None."""
    config = os.environ.get("TF_CONFIG")
    if not config:
        return None
    try:
        return json.loads(config).get("cluster") or None
    except json.JSONDecodeError:
        raise ValueError(f"TF_CONFIG is not JSON. Received: {config[:200]!r}") from None


@functools.cache
def get_strategy(name="auto"):
    """Returns a strategy by name.

    - `"auto"`: a TPU if one is configured (`TPU_NAME`), else
      `MultiWorkerMirroredStrategy` when `TF_CONFIG` names a cluster, else
      `MirroredStrategy` over all GPUs when there are several, else the
      default (one device) strategy.
    - `"cpu"`: the default strategy on the CPU.
    - `"mirrored"`: `MirroredStrategy` over the local GPUs (or the CPU).
    - `"multi_worker"`: `MultiWorkerMirroredStrategy`, configured by the
      `TF_CONFIG` environment variable.
    - `"tpu"`: `TPUStrategy` on the TPU named by `TPU_NAME` (or local); fails
      at once with a `ValueError` where there is none.

    `"parameter_server"` is refused with the reason. One strategy per name
    lives for the process: a second `MirroredStrategy` in the same process
    can reuse the first one's collective instance keys, and its all-reduces
    then fail with shape mismatches (TensorFlow 2.21).
    """
    check_strategy_name(name)
    if name == "auto":
        if os.environ.get("TPU_NAME"):
            return get_strategy("tpu")
        if _cluster():
            return get_strategy("multi_worker")
        if len(tf.config.list_logical_devices("GPU")) > 1:
            return get_strategy("mirrored")
        return tf.distribute.get_strategy()
    if name == "cpu":
        return tf.distribute.OneDeviceStrategy("/cpu:0")
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        cluster = _cluster()
        if not cluster:
            raise ValueError(
                "--strategy multi_worker needs TF_CONFIG naming the cluster and this "
                'task, e.g. {"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
                '"task": {"type": "worker", "index": 0}}. Received: TF_CONFIG '
                f"{os.environ.get('TF_CONFIG')!r}."
            )
        return tf.distribute.MultiWorkerMirroredStrategy()
    return _tpu_strategy()


def _tpu_strategy():
    tpu = os.environ.get("TPU_NAME", "local")
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except Exception as error:  # TF raises ValueError, NotFoundError, ... here
        raise ValueError(
            f"--strategy tpu: no TPU found (TPU_NAME={tpu!r}): {error}. Run on a TPU VM, "
            "or set TPU_NAME to the TPU's name or grpc:// address."
        ) from None
    return tf.distribute.TPUStrategy(resolver)


def local_cluster(workers):
    """`TF_CONFIG` values (JSON) for `workers` processes on this machine, one
    per worker, on free ports of 127.0.0.1: for trying `multi_worker` on one
    machine (the tests and bench/scale.py do)."""
    import socket

    sockets = [socket.socket() for _ in range(workers)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    cluster = {"worker": [f"127.0.0.1:{s.getsockname()[1]}" for s in sockets]}
    for s in sockets:
        s.close()
    return [json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
            for index in range(workers)]


def is_tpu(strategy):
    return isinstance(strategy, (tf.distribute.TPUStrategy,
                                 tf.distribute.experimental.TPUStrategy))


def _task(strategy):
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return None, None
    return resolver.task_type, resolver.task_id


def is_chief(strategy):
    """Whether this process writes the job's outputs: the chief, or worker 0
    of a cluster without one, or the only process."""
    task_type, task_id = _task(strategy)
    if task_type is None or is_tpu(strategy):
        return True
    if task_type == "chief":
        return True
    has_chief = "chief" in (strategy.cluster_resolver.cluster_spec().as_dict() or {})
    return task_type == "worker" and task_id == 0 and not has_chief


def worker_name(strategy):
    """`"worker-1"` style name of this process in a cluster, else None."""
    task_type, task_id = _task(strategy)
    return None if task_type is None or is_tpu(strategy) else f"{task_type}-{task_id}"


def describe(strategy):
    """One line: the strategy, its replicas and, in a cluster, this task."""
    replicas = strategy.num_replicas_in_sync
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        kind = "MultiWorkerMirroredStrategy"
    elif strategy is tf.distribute.get_strategy() and not tf.distribute.has_strategy():
        kind = "default strategy (one device)"
    else:
        kind = type(strategy).__name__
    text = f"{kind}, {replicas} replica{'s' if replicas != 1 else ''}"
    name = worker_name(strategy)
    if name:
        text += f" ({name}{', chief' if is_chief(strategy) else ''})"
    return text
