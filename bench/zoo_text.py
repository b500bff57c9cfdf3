"""TextClassifier: training throughput against keras-hub, export latency, accuracy.

- Throughput: examples/s of `fit` for `TextClassifier` and for the equivalent
  keras-hub model (`TokenAndPositionEmbedding` + `TransformerEncoder` blocks
  of the same sizes, mean pooling, dense head), in the same run: on the same
  fixed-length token ids (the networks alone), and from the raw texts through
  each model's pipeline (ours: `fit(texts, labels)`, which pads each batch to
  its longest text and groups similar lengths; keras-hub's: the same
  WordPiece tokenizer and a `StartEndPacker` padding to the sequence length,
  as keras-hub's preprocessors do), at sequence length 64 and 512, with and
  without XLA.
- Export to first answer: seconds from `model.export(...)` to the first
  response of a fresh process that imports only tensorflow and
  tensorflow_text.
- Accuracy on the fixed held-out split: fine-tuning the shipped preset on 500
  training examples against training from scratch on the same 500.

Usage: `python bench/zoo_text.py [--quick]`; writes its section of RESULTS.md.
"""

import argparse
import datetime
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import keras  # noqa: E402
import keras_hub  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from results import fit_throughput, update_section  # noqa: E402
from zoo import TextClassifier  # noqa: E402
from zoo.datasets import load_sentiment  # noqa: E402
from zoo.text_classifier.train import DEMO_ARCHITECTURE  # noqa: E402

BATCH = 32


def keras_hub_equivalent(architecture, num_classes):
    a = architecture
    ids = keras.Input((a["sequence_length"],), dtype="int32")
    x = keras_hub.layers.TokenAndPositionEmbedding(
        a["vocabulary_size"], a["sequence_length"], a["hidden_dim"], mask_zero=True
    )(ids)
    for _ in range(a["num_layers"]):
        x = keras_hub.layers.TransformerEncoder(
            a["intermediate_dim"], a["num_heads"], dropout=a["dropout"], activation="gelu"
        )(x)
    x = keras.layers.GlobalAveragePooling1D()(x)
    x = keras.layers.Dropout(a["dropout"])(x)
    return keras.Model(ids, keras.layers.Dense(num_classes)(x))


def export_latency(model):
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        version = model.export(Path(folder) / "served")
        exported = time.perf_counter() - start
        child = subprocess.run(
            [sys.executable, "-c",
             "import sys, json, time; t = time.perf_counter(); sys.path.insert(0, sys.argv[1]);"
             "import serving_client; m = serving_client.load(sys.argv[2]);"
             "serving_client.rest_predict(m, json.dumps({'instances': ['a fine film']}));"
             "print(time.perf_counter() - t)",
             str(REPO / "zoo"), str(version.parent)],
            capture_output=True, text=True, check=True,
        )
        answered = float(child.stdout.strip().splitlines()[-1])
        start_to_answer = time.perf_counter() - start
    return exported, answered, start_to_answer


def accuracy_on_500(train, test, epochs):
    texts, labels = train
    results = {}
    keras.utils.set_random_seed(0)
    scratch = TextClassifier(labels=["rotten", "fresh"], **DEMO_ARCHITECTURE)
    scratch.compile()
    scratch.fit(texts, labels, epochs=epochs, batch_size=BATCH, verbose=0)
    results["from scratch"] = scratch.evaluate(*test, verbose=0)[1]
    keras.utils.set_random_seed(0)
    tuned = TextClassifier.from_preset("rotten_tomatoes_small")
    tuned.compile(optimizer=keras.optimizers.AdamW(3e-4, weight_decay=0.01))
    results["preset, before fine-tuning"] = tuned.evaluate(*test, verbose=0)[1]
    tuned.fit(texts, labels, epochs=epochs, batch_size=BATCH, verbose=0)
    results["preset, fine-tuned"] = tuned.evaluate(*test, verbose=0)[1]
    return results


def raw_text_throughput(which, texts, labels, sequence_length, jit, repeats):
    """Best examples/s of a `fit` epoch from raw texts through `which`'s pipeline."""
    architecture = dict(DEMO_ARCHITECTURE, sequence_length=sequence_length)
    keras.utils.set_random_seed(0)
    ours = TextClassifier(labels=["rotten", "fresh"], **architecture)
    ours.adapt(texts)
    optimizer = keras.optimizers.AdamW(1e-3, weight_decay=0.01)
    if which == "ours":
        ours.compile(optimizer=optimizer, jit_compile=jit)

        def epoch():
            ours.fit(texts, labels, batch_size=BATCH, epochs=1, verbose=0)
    else:
        hub = keras_hub_equivalent(architecture, 2)
        hub.compile(optimizer=optimizer, jit_compile=jit,
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                    metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
        packer = keras_hub.layers.StartEndPacker(
            sequence_length=sequence_length, start_value=ours.start_id,
            end_value=ours.end_id, pad_value=0, return_padding_mask=False,
        )
        data = (tf.data.Dataset.from_tensor_slices((texts, labels))
                .shuffle(len(texts), seed=0).batch(BATCH)
                .map(lambda t, y: (packer(ours.tokenizer(t)), y), num_parallel_calls=tf.data.AUTOTUNE)
                .prefetch(tf.data.AUTOTUNE))

        def epoch():
            hub.fit(data, epochs=1, verbose=0)
    epoch()  # traces (and, under XLA, compiles) the step
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        epoch()
        rates.append(len(texts) / (time.perf_counter() - start))
    return max(rates)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    (texts, labels), (test_texts, test_labels) = load_sentiment()
    texts = texts.astype(str)
    names = np.array(["rotten", "fresh"])

    keras.utils.set_random_seed(0)
    ours = TextClassifier(labels=["rotten", "fresh"], **DEMO_ARCHITECTURE)
    ours.adapt(texts[:2000])
    count = 640 if args.quick else 3200
    repeats = 2 if args.quick else 3
    # The networks alone: both on the same ids, padded to the sequence length.
    ids = keras.ops.convert_to_numpy(ours.preprocess(tf.constant(texts[:count])))
    ids = np.pad(ids, ((0, 0), (0, DEMO_ARCHITECTURE["sequence_length"] - ids.shape[1])))
    network_rows = []
    for jit in (False, True):
        rates = []
        for model in (TextClassifier(labels=["rotten", "fresh"], **DEMO_ARCHITECTURE),
                      keras_hub_equivalent(DEMO_ARCHITECTURE, 2)):
            rates.append(fit_throughput(model, ids, labels[:count], BATCH, repeats, jit_compile=jit))
        network_rows.append((jit, *rates))
        print(f"networks on the same ids, XLA {jit}: TextClassifier {rates[0]:.0f}/s, "
              f"keras-hub {rates[1]:.0f}/s, ratio {rates[0] / rates[1]:.2f}", flush=True)
    pipeline_rows = []
    for sequence_length in (DEMO_ARCHITECTURE["sequence_length"], 512):
        n = count if sequence_length <= 64 else count // 4
        for jit in (False, True):
            rates = [raw_text_throughput(which, texts[:n], labels[:n], sequence_length, jit, repeats)
                     for which in ("ours", "hub")]
            pipeline_rows.append((sequence_length, jit, n, *rates))
            print(f"raw texts, sequence length {sequence_length}, XLA {jit}: TextClassifier "
                  f"{rates[0]:.0f}/s, keras-hub {rates[1]:.0f}/s, ratio {rates[0] / rates[1]:.2f}",
                  flush=True)

    exported, answered, total = export_latency(ours)
    print(f"export {exported:.1f}s; fresh process load + first answer {answered:.1f}s; total {total:.1f}s",
          flush=True)

    accuracy = accuracy_on_500(
        (texts[:500], names[labels[:500]]), (test_texts, names[test_labels]), epochs=2 if args.quick else 4
    )
    for name, value in accuracy.items():
        print(f"accuracy, {name}: {value:.4f}", flush=True)

    a = DEMO_ARCHITECTURE
    body = "\n".join([
        f"Latest run: {datetime.date.today().isoformat()}, `python bench/zoo_text.py` on {platform.machine()} "
        f"with {os.cpu_count()} CPU cores; TensorFlow {tf.__version__}, Keras {keras.__version__}, "
        f"keras-hub {keras_hub.__version__}.",
        "",
        f"Model: {a['num_layers']} encoder blocks, width {a['hidden_dim']}, {a['num_heads']} heads, "
        f"feed-forward {a['intermediate_dim']}, sequence length {a['sequence_length']}, "
        f"vocabulary {a['vocabulary_size']}, batch {BATCH}.",
        "",
        "Training throughput (examples/s of one `fit` epoch, best of "
        f"{repeats} after a warm-up epoch):",
        "",
        "| input | sequence length | XLA | examples | TextClassifier | keras-hub equivalent | ratio |",
        "|---|---:|---|---:|---:|---:|---:|",
        *[f"| same token ids, fixed length (networks alone) | {a['sequence_length']} | {'yes' if jit else 'no'} | "
          f"{count} | {ours_rate:.0f} | {theirs_rate:.0f} | {ours_rate / theirs_rate:.2f}x |"
          for jit, ours_rate, theirs_rate in network_rows],
        *[f"| raw texts through each model's pipeline | {length} | {'yes' if jit else 'no'} | {n} | "
          f"{ours_rate:.0f} | {theirs_rate:.0f} | {ours_rate / theirs_rate:.2f}x |"
          for length, jit, n, ours_rate, theirs_rate in pipeline_rows],
        "",
        "Our pipeline pads each batch to its longest text (rounded up to 8 tokens) and groups similar "
        "lengths (`zoo.pipeline.length_grouped_batches`); keras-hub's preprocessors pad every text to the "
        "sequence length. The sentiment snippets average 38 tokens.",
        "",
        f"Export to first answer: `export()` {exported:.1f} s, then a fresh TensorFlow-only process loads the "
        f"SavedModel and answers its first request in {answered:.1f} s ({total:.1f} s in all).",
        "",
        "Accuracy on the fixed held-out test split (2562 snippets), 500 training examples:",
        "",
        "| model | test accuracy |",
        "|---|---|",
        *[f"| {name} | {value:.4f} |" for name, value in accuracy.items()],
        "",
        "The preset's body was trained (by `python -m zoo.text_classifier.recipe`) on the training split, "
        "which includes these 500 examples, never on the test split.",
    ])
    print(f"wrote {update_section('Text classifier', body)}")


if __name__ == "__main__":
    main()
