"""What the benchmarks share: `fit` throughput, a measurement in a fresh
process, and writing one benchmark's section of bench/RESULTS.md while
keeping the others."""

import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")
TITLE = "# Benchmark results\n"


def fit_throughput(model, inputs, labels, batch_size, repeats, jit_compile="auto"):
    """Best examples/s of one `keras.Model.fit` epoch over `(inputs, labels)`,
    after a short warm-up that traces the step."""
    import keras
    import tensorflow as tf

    model.compile(optimizer=keras.optimizers.AdamW(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  jit_compile=jit_compile)
    data = tf.data.Dataset.from_tensor_slices((inputs, labels)).batch(batch_size).cache()
    return dataset_fit_throughput(model, data, len(inputs), repeats)


def dataset_fit_throughput(model, data, examples, repeats):
    """Best examples/s of one `keras.Model.fit` epoch of a compiled `model`
    over the (cached) dataset `data` of `examples` examples, after a short
    warm-up that traces the step."""
    import keras

    keras.Model.fit(model, data.take(4), epochs=1, verbose=0)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        keras.Model.fit(model, data, epochs=1, verbose=0)
        rates.append(examples / (time.perf_counter() - start))
    return max(rates)


def run_measurement(code, arguments):
    """Runs Python `code` in a fresh process (its own peak memory) with
    `arguments` as JSON in `sys.argv[1]`; returns what it printed as
    `RESULT <json>`, or raises with the end of its stderr."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code), json.dumps(arguments)],
                          capture_output=True, text=True, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(lines[-1][len("RESULT "):])


def update_section(heading, body, path=RESULTS):
    """Replaces the `## heading` section of `path` with `body` (or appends it)."""
    path = Path(path)
    text = path.read_text() if path.exists() else TITLE
    section = f"## {heading}\n\n{body.strip()}\n\n"
    pattern = re.compile(rf"^## {re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text.rstrip("\n") + "\n")
    return path
