"""The `tf.distribute` strategy a zoo model trains under."""

import functools
import json
import os

import tensorflow as tf

STRATEGIES = ("auto", "cpu", "mirrored", "multi_worker", "tpu")


@functools.cache
def get_strategy(name="auto"):
    """Returns a strategy by name.

    - `"auto"`: a TPU if one is configured, else `MirroredStrategy` over all
      GPUs when there are several, else the default (one device) strategy.
    - `"cpu"`: the default strategy on the CPU.
    - `"mirrored"`: `MirroredStrategy` over the local GPUs (or the CPU).
    - `"multi_worker"`: `MultiWorkerMirroredStrategy`, configured by the
      `TF_CONFIG` environment variable.
    - `"tpu"`: `TPUStrategy` on the TPU named by `TPU_NAME` (or local).

    One strategy per name lives for the process: a second
    `MirroredStrategy` in the same process can reuse the first one's
    collective instance keys, and its all-reduces then fail with shape
    mismatches (TensorFlow 2.21).
    """
    if name not in STRATEGIES:
        raise ValueError(f"Unknown strategy {name!r}; expected one of {STRATEGIES}.")
    if name == "auto":
        if os.environ.get("TPU_NAME"):
            return get_strategy("tpu")
        if "TF_CONFIG" in os.environ and json.loads(os.environ["TF_CONFIG"]).get("cluster"):
            return get_strategy("multi_worker")
        if len(tf.config.list_logical_devices("GPU")) > 1:
            return tf.distribute.MirroredStrategy()
        return tf.distribute.get_strategy()
    if name == "cpu":
        return tf.distribute.OneDeviceStrategy("/cpu:0")
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(os.environ.get("TPU_NAME", "local"))
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)
