"""Shared fixtures. Two logical CPU devices are configured before TensorFlow
initializes its devices, so the distribution tests run a real
`MirroredStrategy` on this machine."""

import contextlib
import gc
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from serving_process import ServingProcess  # noqa: E402


def pytest_configure(config):
    # pytest-xdist's controller hands the tests to its workers and runs
    # none: importing TensorFlow there cost 6 CPU-seconds while the workers
    # started beside it.
    if config.getoption("numprocesses", default=None) and not hasattr(config, "workerinput"):
        return
    # Python's cyclic garbage collector, run less often: tracing allocates
    # objects by the million, and a process holding the session's models
    # spent 6% of its time in full collections (the translator file: 6.3
    # CPU-s of garbage collection by default, 2.1 with these thresholds).
    gc.set_threshold(10_000, 10, 10)
    import tensorflow as tf

    cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
    # Grappler, TensorFlow's graph optimizer, off in the pytest processes: it
    # rewrites every traced function before its first run, which for these
    # tiny models is work that never pays back (a tiny translator's and
    # classifier's fit, predict and translate: 13.3 CPU-s with it, 10.9
    # without; no single pass dominates). It changes no result the tests
    # check beyond float round-off. Every process the tests start (the
    # command line, the fresh processes that serve an export as TF Serving
    # would) runs TensorFlow's defaults, Grappler included, as users do.
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})


@contextlib.contextmanager
def graph_optimizer_on():
    """TensorFlow's default, Grappler on, inside the block: for results a
    test compares bit for bit with a fresh process, which runs it."""
    import tensorflow as tf

    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": False})
    try:
        yield
    finally:
        tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})


REPO_ROOT = Path(__file__).resolve().parent.parent
# MiniLM, small keras-hub presets and Hugging Face folders (tests/checkpoint_fixtures.py).
pytest_plugins = ["checkpoint_fixtures"]


# The longest files first (CPU and wall time of the suite's files, bench/RESULTS.md):
# `make test` hands whole files to its two workers in collection order
# (`--no-loadscope-reorder`), so the long ones start early and the short ones
# even out the end. xdist's own order, most tests first, left the long files
# of few tests to the end, and one worker idled for a minute.
LONGEST_FILES_FIRST = (
    "test_zoo_scale.py", "test_zoo_cli.py", "test_zoo_translator.py", "test_text_encoder.py",
    "test_checkpoint_tasks.py", "test_zoo_image_classifier.py", "test_hostile_inputs.py",
    "test_tutorials.py", "test_lora.py", "test_zoo_text_classifier.py",
    "test_long_documents.py", "test_vit_checkpoints.py", "test_serialization.py",
)


def pytest_collection_modifyitems(items):
    rank = {name: position for position, name in enumerate(LONGEST_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest as found


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


def run_python(code, cwd, timeout=300, backend=None):
    """Runs `code` in a fresh interpreter (on Keras `backend`, default this
    process's); returns its stdout, failing loudly."""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    if backend is not None:
        env["KERAS_BACKEND"] = backend
    if backend == "jax":
        # As `make test`'s JAX pass runs: these small programs spend their
        # time compiling (a fresh process loading six models: 12.5 CPU-s
        # with XLA's optimizations, 6.3 without); the numerics are the same.
        env.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
    )
    if result.returncode != 0:
        raise AssertionError(
            f"subprocess failed ({result.returncode}):\n{result.stdout}\n{result.stderr[-4000:]}"
        )
    return result.stdout


def write_reviews_csv(folder, sentiment_sample, count):
    """The first `count` labelled reviews as `folder/reviews.csv` (review, sentiment)."""
    import csv

    (texts, labels), _ = sentiment_sample
    with open(folder / "reviews.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["review", "sentiment"])
        writer.writerows(zip(texts[:count], labels[:count]))
    return folder / "reviews.csv"


TINY_ARCHITECTURE = dict(vocabulary_size=600, sequence_length=24, hidden_dim=32,
                         num_layers=1, num_heads=2, intermediate_dim=64, dropout=0.0)
# The same sizes for `train text-classifier`, for the command-line runs whose
# checks do not depend on the network: a smaller one traces in less time.
TINY_SIZES = ["--architecture", ",".join(f"{key}={value}" for key, value in
                                         TINY_ARCHITECTURE.items() if key != "dropout")]


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


TINY_VIT = dict(image_size=28, channels=1, patch_size=4, hidden_dim=32, num_layers=2,
                num_heads=2, intermediate_dim=64, dropout=0.0)


@pytest.fixture(scope="session")
def digits_sample():
    from zoo.datasets import load_digits

    (images, labels), (test_images, test_labels) = load_digits()
    return (images[:600], labels[:600].astype(str)), (test_images[:64], test_labels[:64].astype(str))


@pytest.fixture(scope="session")
def tiny_image_classifier(digits_sample):
    """A small ImageClassifier fitted once for the whole session."""
    import keras

    from zoo import ImageClassifier

    keras.utils.set_random_seed(0)
    (images, labels), _ = digits_sample
    model = ImageClassifier(num_classes=10, **TINY_VIT)  # names come from the data
    # Enough training to be right a third of the time: the tests compare
    # predictions across input forms, which a near-constant model passes by luck.
    # Without XLA (each of the two workers builds this model, and compiling
    # cost more than the fit): XLA's default has its own test.
    model.compile(optimizer=keras.optimizers.AdamW(3e-3), jit_compile=False)
    model.fit(images, labels, epochs=5, batch_size=64, verbose=0)
    return model


def write_image_folder(folder, images, labels, formats=("png",)):
    """Writes `folder/<label>/<i>.<format>`, cycling through `formats`."""
    import tensorflow as tf

    encoders = {
        "png": tf.io.encode_png,
        "jpg": lambda image: tf.io.encode_jpeg(image, quality=95),
        "bmp": _encode_bmp,
        "gif": _encode_gif,
    }
    for index, (image, label) in enumerate(zip(images, labels)):
        fmt = formats[index % len(formats)]
        target = folder / str(label)
        target.mkdir(parents=True, exist_ok=True)
        pixels = image if image.ndim == 3 else image[..., None]
        (target / f"{index}.{fmt}").write_bytes(bytes(encoders[fmt](pixels).numpy()))
    return folder


def _encode_bmp(image):
    """A 24-bit BMP (TensorFlow decodes BMP but has no encoder)."""
    import struct

    import tensorflow as tf

    pixels = np.asarray(image)
    if pixels.shape[-1] == 1:
        pixels = np.repeat(pixels, 3, -1)
    height, width, _ = pixels.shape
    row = (width * 3 + 3) // 4 * 4
    body = b"".join(
        pixels[y, :, ::-1].tobytes().ljust(row, b"\0") for y in range(height - 1, -1, -1)
    )
    header = struct.pack("<2sIHHI", b"BM", 54 + len(body), 0, 0, 54)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, len(body), 2835, 2835, 0, 0)
    return tf.constant(header + info + body)


def _encode_gif(image):
    """A one-frame GIF through Pillow, which matplotlib already requires."""
    import io

    import tensorflow as tf
    from PIL import Image

    pixels = np.asarray(image)
    buffer = io.BytesIO()
    Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(buffer, "GIF")
    return tf.constant(buffer.getvalue())


TINY_TRANSLATOR = dict(vocabulary_size=80, source_sequence_length=12, target_sequence_length=12,
                       hidden_dim=32, num_encoder_layers=1, num_decoder_layers=2, num_heads=2,
                       intermediate_dim=64, dropout=0.0)

NUMBERS = {"one": "eins", "two": "zwei", "three": "drei", "four": "vier", "five": "fünf",
           "six": "sechs", "seven": "sieben", "eight": "acht", "nine": "neun", "ten": "zehn"}


def number_pairs(count, seed):
    """English number words -> German, 1 to 6 words: a task a tiny translator learns."""
    rng = np.random.default_rng(seed)
    words = list(NUMBERS)
    sources = [" ".join(rng.choice(words, rng.integers(1, 7))) for _ in range(count)]
    return sources, [" ".join(NUMBERS[w] for w in s.split()) for s in sources]


def xla_only_ops(export_version_dir):
    """The op types in a SavedModel (graph and every function) that run only
    through XLA (`Xla*`): a stock TF Serving binary may not run them."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString((Path(export_version_dir) / "saved_model.pb").read_bytes())
    ops = set()
    for graph in saved.meta_graphs:
        ops.update(node.op for node in graph.graph_def.node)
        for function in graph.graph_def.library.function:
            ops.update(node.op for node in function.node_def)
    return sorted(op for op in ops if op.startswith("Xla"))


def run_main(args, capsys):
    """`python -m zoo ARGS` in this process: (exit code, stdout, stderr). For
    the steps after a test's first real command (which starts the process a
    user would): reading a run back, resuming it, a refusal."""
    from zoo.__main__ import main

    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def environment(**extra):
    return dict(os.environ, PYTHONPATH=str(REPO_ROOT), TF_CPP_MIN_LOG_LEVEL="2",
                PYTHONUNBUFFERED="1", **extra)


_SERVING_PROCESS = ServingProcess(environment())


def serve_in_clean_process(code, cwd, timeout=300):
    """Runs `code` in this worker's serving process, which imports only
    tensorflow and tensorflow_text, as TF Serving links them, and never
    keras-hub, the zoo or the layers (tests/serving_process.py); returns
    its stdout, failing loudly."""
    return _SERVING_PROCESS.run(code, cwd, timeout)


def pytest_sessionfinish(session):
    _SERVING_PROCESS.close()


def run_until(command, cwd, marker):
    """Starts `command`, reads its output until a line contains `marker`,
    then kills it with SIGKILL; returns the output so far."""
    process, seen = _signal_at(command, cwd, marker, signal.SIGKILL, stderr=subprocess.STDOUT)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, seen[-3000:]
    return seen


def interrupt_at(command, cwd, marker):
    """Starts `command`, reads its stdout until a line contains `marker`,
    then sends it SIGINT, as a terminal's Ctrl-C does; returns `(exit code,
    its whole stdout, its stderr)`."""
    process, seen = _signal_at(
        command, cwd, marker, signal.SIGINT, stderr=subprocess.PIPE,
        # A pytest-xdist worker ignores SIGINT, and Python keeps an inherited
        # SIG_IGN; a terminal's Ctrl-C reaches a default handler.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    rest, err = process.communicate(timeout=120)
    return process.returncode, seen + rest, err


def _signal_at(command, cwd, marker, signum, **popen):
    process = subprocess.Popen(command, cwd=cwd, env=environment(), stdout=subprocess.PIPE,
                               text=True, **popen)
    seen = []
    for line in process.stdout:
        seen.append(line)
        if marker in line:
            process.send_signal(signum)
            break
    return process, "".join(seen)


def serves_like_predict(model, inputs, instances, folder):
    """Exports `model`; a process that imports only tensorflow and
    tensorflow_text answers a REST request of `instances` (TF Serving's row
    format) with the probabilities `predict` gives for `inputs`, to 1e-5."""
    import json

    import tensorflow as tf

    version = model.export(folder / "served")
    expected = tf.nn.softmax(model.predict(inputs, verbose=0)).numpy()
    np.save(folder / "expected.npy", expected)
    (folder / "request.json").write_text(json.dumps({"instances": instances}))
    out = serve_in_clean_process(
        f"""
        import json, sys
        import numpy as np
        sys.path.insert(0, {str(REPO_ROOT / "zoo")!r})
        import serving_client  # imports tensorflow and tensorflow_text only
        loaded = serving_client.load("served")
        body = open("request.json").read()
        rows = json.loads(serving_client.rest_predict(loaded, body))["predictions"]
        got = np.array([row["probabilities"] for row in rows])
        expected = np.load("expected.npy")
        assert np.abs(got - expected).max() < 1e-5, np.abs(got - expected).max()
        # TensorFlow imports keras itself; nothing of keras-hub or the zoo is loaded.
        print("served", sorted(m for m in sys.modules if m.startswith(("keras_hub", "zoo",
                                                                        "keras_selfattn"))))
        """, cwd=folder)
    assert "served []" in out, out
    return version
