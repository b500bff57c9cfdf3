"""Shared fixtures. Two logical CPU devices are configured before TensorFlow
initializes its devices, so the distribution tests run a real
`MirroredStrategy` on this machine."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0],
    [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()],
)

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def mirrored_strategy():
    """One MirroredStrategy over the two logical CPUs for the whole session:
    several in one process collide on collective keys (see zoo.distribute)."""
    from zoo.distribute import get_strategy

    strategy = get_strategy("mirrored")
    assert strategy.num_replicas_in_sync == 2
    return strategy


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def run_python(code, cwd, timeout=300):
    """Runs `code` in a fresh interpreter; returns its stdout, failing loudly."""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
    )
    if result.returncode != 0:
        raise AssertionError(
            f"subprocess failed ({result.returncode}):\n{result.stdout}\n{result.stderr[-4000:]}"
        )
    return result.stdout


TINY_ARCHITECTURE = dict(vocabulary_size=600, sequence_length=24, hidden_dim=32,
                         num_layers=1, num_heads=2, intermediate_dim=64, dropout=0.0)


@pytest.fixture(scope="session")
def sentiment_sample():
    from zoo.datasets import load_sentiment

    (texts, labels), (test_texts, test_labels) = load_sentiment()
    names = np.array(["rotten", "fresh"])
    return (texts[:400], names[labels[:400]]), (test_texts[:100], names[test_labels[:100]])


@pytest.fixture(scope="session")
def tiny_classifier(sentiment_sample):
    """A small TextClassifier fitted once for the whole session."""
    import keras

    from zoo import TextClassifier

    keras.utils.set_random_seed(0)
    (texts, labels), _ = sentiment_sample
    model = TextClassifier(num_classes=2, **TINY_ARCHITECTURE)  # names come from the data
    model.compile()
    model.fit(texts, labels, epochs=2, batch_size=32, verbose=0)
    return model
