"""TextClassifier: training throughput against keras-hub, export latency, accuracy.

- Throughput: examples/s of `fit` for `TextClassifier` and for the equivalent
  keras-hub model (`TokenAndPositionEmbedding` + `TransformerEncoder` blocks
  of the same sizes, mean pooling, dense head), both on the same token ids in
  the same run.
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    (texts, labels), (test_texts, test_labels) = load_sentiment()
    names = np.array(["rotten", "fresh"])

    keras.utils.set_random_seed(0)
    ours = TextClassifier(labels=["rotten", "fresh"], **DEMO_ARCHITECTURE)
    ours.adapt(texts[:2000])
    count = 640 if args.quick else 3200
    ids = ours.preprocess(tf.constant(texts[:count].astype(str))).numpy()
    repeats = 2 if args.quick else 3
    ours_rate = fit_throughput(ours, ids, labels[:count], BATCH, repeats)
    theirs_rate = fit_throughput(keras_hub_equivalent(DEMO_ARCHITECTURE, 2), ids, labels[:count],
                                 BATCH, repeats)
    print(f"throughput: TextClassifier {ours_rate:.0f}/s, keras-hub {theirs_rate:.0f}/s, "
          f"ratio {ours_rate / theirs_rate:.2f}", flush=True)

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
        "| measure | TextClassifier | keras-hub equivalent | ratio |",
        "|---|---|---|---|",
        f"| training throughput (examples/s, best of runs over {count} examples) | {ours_rate:.0f} | "
        f"{theirs_rate:.0f} | {ours_rate / theirs_rate:.2f}x |",
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
