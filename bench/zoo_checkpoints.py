"""Real checkpoints: fine-tuning throughput against keras-hub, same checkpoint.

`TextClassifier.from_preset("all_minilm_l6_v2")` (MiniLM read from its pip
package into a zoo backbone) against keras-hub's `BertTextClassifier` loaded
from the same checkpoint folder, both fitted from raw strings of the embedded
sentiment training split, batch 32, AdamW, in one process, alternating. keras-hub's preprocessor
pads every batch to its `sequence_length`; ours pads each batch to its
longest text (rounded up to 8). Prints examples/s and the ratio, and writes
the section "Real checkpoints: fine-tuning throughput" of RESULTS.md.

    python bench/zoo_checkpoints.py [--examples 640] [--repeats 2]
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import zipfile
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import keras  # noqa: E402
import keras_hub  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from results import update_section  # noqa: E402
from zoo import TextClassifier  # noqa: E402
from zoo.datasets import load_sentiment  # noqa: E402
from zoo.text_transformer.bodies import packaged_checkpoint_zip  # noqa: E402

BATCH = 32
CHECKPOINT = "all_minilm_l6_v2"


def hub_folder(work):
    """The checkpoint unpacked, with the vocab.txt keras-hub's BERT tokenizer reads."""
    with zipfile.ZipFile(packaged_checkpoint_zip(CHECKPOINT)) as zipped:
        zipped.extractall(work)
    vocab = json.loads((work / "tokenizer.json").read_text())["model"]["vocab"]
    (work / "vocab.txt").write_text("\n".join(sorted(vocab, key=vocab.get)) + "\n")
    return work


def epoch_seconds(fit, repeats):
    """Best seconds of one epoch, after a first epoch that traces the step."""
    fit()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fit()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=640)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--sequence-length", type=int, default=64)
    args = parser.parse_args(argv)
    (texts, labels), _ = load_sentiment()
    texts, labels = np.asarray(texts[:args.examples]), np.asarray(labels[:args.examples])
    work = Path(tempfile.mkdtemp())
    try:
        folder = hub_folder(work)
        keras.utils.set_random_seed(0)
        ours = TextClassifier.from_preset(CHECKPOINT, labels=["rotten", "fresh"],
                                          sequence_length=args.sequence_length)
        ours.compile(optimizer=keras.optimizers.AdamW(5e-5, weight_decay=0.01))
        preprocessor = keras_hub.models.BertTextClassifierPreprocessor.from_preset(
            str(folder), sequence_length=args.sequence_length)
        hub = keras_hub.models.BertTextClassifier.from_preset(
            str(folder), num_classes=2, preprocessor=preprocessor)
        hub.compile(optimizer=keras.optimizers.AdamW(5e-5, weight_decay=0.01),
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        raw = tf.data.Dataset.from_tensor_slices((texts, labels)).batch(BATCH)
        lengths = ours.preprocess(tf.constant(texts)).shape[1]
        tokens = [len(ids) for ids in ours.preprocessor.tokenize(tf.constant(texts)).to_list()]
        ours_seconds, hub_seconds = [], []
        for _ in range(2):  # alternate, so drift on a shared machine hits both
            ours_seconds.append(epoch_seconds(
                lambda: ours.fit(texts, labels, batch_size=BATCH, epochs=1, verbose=0),
                args.repeats))
            hub_seconds.append(epoch_seconds(lambda: hub.fit(raw, epochs=1, verbose=0),
                                             args.repeats))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ours_rate = len(texts) / min(ours_seconds)
    hub_rate = len(texts) / min(hub_seconds)
    print(f"MiniLM fine-tuning from raw strings, batch {BATCH}, {len(texts)} examples "
          f"(mean {np.mean(tokens) + 2:.1f} tokens, longest {lengths}):")
    print(f"  zoo TextClassifier        {ours_rate:6.1f} examples/s")
    print(f"  keras-hub BertTextClassifier {hub_rate:6.1f} examples/s")
    print(f"  ratio {ours_rate / hub_rate:.2f}x")
    body = "\n".join([
        f"`python bench/zoo_checkpoints.py` ({os.cpu_count()} CPU cores). MiniLM "
        f"(`sentence-transformers/all-MiniLM-L6-v2`, 22.7 M parameters) fine-tuned from raw "
        f"strings of the embedded sentiment training split: {len(texts)} snippets (mean "
        f"{np.mean(tokens) + 2:.1f} tokens with [CLS] and [SEP]), batch {BATCH}, AdamW, "
        f"`sequence_length={args.sequence_length}` for both, best of {args.repeats} epochs after a "
        "tracing epoch, the two alternated twice in one process.",
        "",
        "| model | examples/s |",
        "|---|---:|",
        f"| zoo `TextClassifier.from_preset(\"{CHECKPOINT}\")` | {ours_rate:.1f} |",
        f"| keras-hub `BertTextClassifier` from the same checkpoint | {hub_rate:.1f} |",
        f"| ratio | **{ours_rate / hub_rate:.2f}x** |",
        "",
        "keras-hub pads every batch to `sequence_length`; the zoo pads each batch to its longest "
        "text and groups texts of similar length, so a step costs what its texts hold.",
    ])
    update_section("Real checkpoints: fine-tuning throughput", body)


if __name__ == "__main__":
    main()
