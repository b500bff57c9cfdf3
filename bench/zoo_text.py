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
- Quality against what users would pick instead (`--part quality`), on the
  fixed held-out split of the embedded sentiment data and on the WordNet
  definitions topic task, in the same run: TF-IDF (1-2-grams, sublinear tf)
  + logistic regression (scikit-learn, C=4; installed for this benchmark
  only), our classifier from scratch, our classifier fine-tuned from the
  shipped pretrained body, the keras-hub equivalent from scratch, and our
  classifier fine-tuned from the MiniLM checkpoint (the default body), each
  with test accuracy and training time; then the same on 500 training
  examples. The figures also go to `bench/zoo_text_quality.json`, which
  `make demo` prints next to its own result.

Usage: `python bench/zoo_text.py [--quick] [--part all|speed|quality]`;
writes its sections of RESULTS.md.
"""

import argparse
import contextlib
import datetime
import json
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

from zoo.tensorflow_logs import without_tensorflow_logs  # noqa: E402

# `make demo` ends with this report, read by a newcomer: TensorFlow's C++
# start-up lines are hidden there, as in `python -m zoo`.
QUIET = (without_tensorflow_logs() if __name__ == "__main__" and "--demo-report" in sys.argv
         else contextlib.nullcontext())
QUIET.__enter__()

import keras  # noqa: E402
import keras_hub  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from results import fit_throughput, update_section  # noqa: E402
from zoo import TextClassifier, TextEncoder  # noqa: E402
from zoo.datasets import load_definitions, load_sentiment  # noqa: E402
from zoo.text_classifier.train import (  # noqa: E402
    CHECKPOINT_BODY, CHECKPOINT_FINE_TUNING, OWN_BODY, DEMO_ARCHITECTURE, FINE_TUNING,
    FROM_SCRATCH, fine_tuning_schedule, recipe_epochs,
)

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


QUALITY_JSON = Path(__file__).with_name("zoo_text_quality.json")
SKLEARN = "scikit-learn==1.8.0"


def tfidf_logistic_regression(train, test):
    """The linear baseline: TF-IDF of 1-2-grams (sublinear tf) + logistic
    regression with C=4; `(accuracy, seconds)`."""
    try:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
    except ImportError:
        raise SystemExit(f"The quality benchmark needs scikit-learn: pip install {SKLEARN}") from None
    start = time.perf_counter()
    model = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True),
                          LogisticRegression(C=4, max_iter=2000))
    model.fit(list(train[0]), list(train[1]))
    seconds = time.perf_counter() - start
    return float((model.predict(list(test[0])) == np.asarray(test[1])).mean()), seconds


def ours(train, test, pretrained, epochs=None):
    """Our classifier from scratch (`FROM_SCRATCH`, vocabulary learned from
    the training texts) or fine-tuned from the shipped body
    (`FINE_TUNING`); `(accuracy, seconds)`, the vocabulary included."""
    labels = sorted(set(map(str, train[1])))
    keras.utils.set_random_seed(0)
    start = time.perf_counter()
    if pretrained:
        recipe = FINE_TUNING
        model = TextClassifier.from_preset(OWN_BODY, labels=labels)
        epochs = epochs or recipe["epochs"]
        schedule = fine_tuning_schedule(len(train[0]), BATCH, epochs)
    else:
        recipe = FROM_SCRATCH
        model = TextClassifier(labels=labels, **DEMO_ARCHITECTURE)
        model.adapt(train[0])
        epochs, schedule = epochs or recipe["epochs"], recipe["learning_rate"]
    model.compile(optimizer=keras.optimizers.AdamW(schedule, weight_decay=0.01))
    model.fit(train[0], train[1], epochs=epochs, batch_size=BATCH, verbose=0)
    seconds = time.perf_counter() - start
    return float(model.evaluate(test[0], test[1], verbose=0)[1]), seconds


def checkpoint(train, test):
    """Our classifier fine-tuned from the MiniLM checkpoint with the command
    line's defaults (`CHECKPOINT_FINE_TUNING`); `(accuracy, seconds)`."""
    labels = sorted(set(map(str, train[1])))
    keras.utils.set_random_seed(0)
    start = time.perf_counter()
    model = TextClassifier.from_preset(CHECKPOINT_BODY, labels=labels)
    epochs = recipe_epochs(CHECKPOINT_FINE_TUNING, len(train[0]), BATCH)
    schedule = fine_tuning_schedule(len(train[0]), BATCH, epochs, recipe=CHECKPOINT_FINE_TUNING)
    model.compile(optimizer=keras.optimizers.AdamW(schedule, weight_decay=0.01))
    model.fit(train[0], train[1], epochs=epochs, batch_size=BATCH, verbose=0)
    seconds = time.perf_counter() - start
    return float(model.evaluate(test[0], test[1], verbose=0)[1]), seconds


def keras_hub_from_scratch(train, test, epochs=None):
    """The keras-hub equivalent of our from-scratch model, on the same
    WordPiece vocabulary learned from the training texts and packed by
    keras-hub's `StartEndPacker`; `(accuracy, seconds)`."""
    labels = sorted(set(map(str, train[1])))
    ids = {name: i for i, name in enumerate(labels)}
    keras.utils.set_random_seed(0)
    start = time.perf_counter()
    tokens = TextClassifier(labels=labels, **DEMO_ARCHITECTURE)
    tokens.adapt(train[0])
    packer = keras_hub.layers.StartEndPacker(
        sequence_length=DEMO_ARCHITECTURE["sequence_length"], start_value=tokens.preprocessor.start_id,
        end_value=tokens.preprocessor.end_id, pad_value=0, return_padding_mask=False,
    )

    def batches(texts, targets, shuffle):
        data = tf.data.Dataset.from_tensor_slices(
            (np.asarray(texts, str), np.array([ids[str(t)] for t in targets])))
        if shuffle:
            data = data.shuffle(len(texts), seed=0)
        return (data.batch(BATCH).map(lambda t, y: (packer(tokens.tokenizer(t)), y))
                .prefetch(tf.data.AUTOTUNE))

    hub = keras_hub_equivalent(DEMO_ARCHITECTURE, len(labels))
    hub.compile(optimizer=keras.optimizers.AdamW(FROM_SCRATCH["learning_rate"], weight_decay=0.01),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
    hub.fit(batches(*train, True), epochs=epochs or FROM_SCRATCH["epochs"], verbose=0)
    seconds = time.perf_counter() - start
    return float(hub.evaluate(batches(*test, False), verbose=0)[1]), seconds


def quality_tasks():
    """`{task: (train, test)}`: texts and label names."""
    (texts, labels), (test_texts, test_labels) = load_sentiment()
    names = np.array(["rotten", "fresh"])
    sentiment = ((texts.astype(str), names[labels]), (test_texts.astype(str), names[test_labels]))
    (texts, labels), (test_texts, test_labels) = load_definitions()
    definitions = ((texts.astype(str), labels.astype(str)),
                   (test_texts.astype(str), test_labels.astype(str)))
    return {"sentiment (Rotten Tomatoes snippets)": sentiment,
            "topic (WordNet noun definitions, 25 fields)": definitions}


def quality(quick):
    """Every model on every task, then our two on 500 training examples."""
    methods = {
        "TF-IDF 1-2-grams + logistic regression (scikit-learn)": tfidf_logistic_regression,
        "TextClassifier from scratch": lambda train, test: ours(train, test, False),
        f"TextClassifier fine-tuned from `{OWN_BODY}`": lambda train, test: ours(train, test, True),
        "keras-hub equivalent from scratch": keras_hub_from_scratch,
        f"TextClassifier fine-tuned from `{CHECKPOINT_BODY}` (MiniLM)": checkpoint,
    }
    results = {"date": datetime.date.today().isoformat(), "tasks": {}}
    for task, (train, test) in quality_tasks().items():
        if quick:
            train = (train[0][:1000], train[1][:1000])
        rows = results["tasks"][task] = {"train_examples": len(train[0]),
                                         "test_examples": len(test[0]), "full": {}, "500": {}}
        for name, method in methods.items():
            accuracy, seconds = method(train, test)
            rows["full"][name] = {"accuracy": round(accuracy, 4), "seconds": round(seconds, 1)}
            print(f"{task}: {name}: accuracy {accuracy:.4f}, {seconds:.0f} s", flush=True)
        few = (train[0][:500], train[1][:500])
        for name in ("TextClassifier from scratch", f"TextClassifier fine-tuned from `{OWN_BODY}`"):
            # More passes over the small set: the same number of steps as 4 epochs of 2,000.
            accuracy, seconds = ours(few, test, "fine-tuned" in name, epochs=16)
            rows["500"][name] = {"accuracy": round(accuracy, 4), "seconds": round(seconds, 1)}
            print(f"{task}, 500 examples: {name}: accuracy {accuracy:.4f}", flush=True)
        name = f"TextClassifier fine-tuned from `{CHECKPOINT_BODY}` (MiniLM)"
        accuracy, seconds = checkpoint(few, test)  # the recipe's epochs for 500 examples
        rows["500"][name] = {"accuracy": round(accuracy, 4), "seconds": round(seconds, 1)}
        print(f"{task}, 500 examples: {name}: accuracy {accuracy:.4f}", flush=True)
    QUALITY_JSON.write_text(json.dumps(results, indent=2) + "\n")
    return results


def quality_section(results):
    lines = [
        f"Latest run: {results['date']}, `python bench/zoo_text.py --part quality` on "
        f"{platform.machine()} with {os.cpu_count()} CPU cores; TensorFlow {tf.__version__}, "
        f"Keras {keras.__version__}, keras-hub {keras_hub.__version__}.",
        "",
        "Test accuracy on fixed held-out splits kept out of pretraining; training time is "
        "the wall time of fitting (learning the vocabulary included where there is one), on 2 CPU cores. "
        f"From scratch: {FROM_SCRATCH['epochs']} epochs at {FROM_SCRATCH['learning_rate']:g}; "
        f"fine-tuned: {FINE_TUNING['epochs']} epochs, peak {FINE_TUNING['learning_rate']:g} after a "
        f"{FINE_TUNING['warmup_fraction']:.0%} warm-up, cosine decay; batch {BATCH}. MiniLM "
        f"(`sentence-transformers/all-MiniLM-L6-v2`, read from its pip package): the command "
        f"line's defaults, peak {CHECKPOINT_FINE_TUNING['learning_rate']:g}, one epoch when the data "
        f"gives {CHECKPOINT_FINE_TUNING['min_steps']} steps, else enough epochs for them (at most "
        f"{CHECKPOINT_FINE_TUNING['max_epochs']}: "
        f"{recipe_epochs(CHECKPOINT_FINE_TUNING, 500, BATCH)} on 500 examples).",
    ]
    body = json.loads((TextEncoder.presets[OWN_BODY] / "metadata.json").read_text())["training"]
    lines += ["", f"The body `{OWN_BODY}`: pretrained by `python -m zoo.text_encoder.pretrain` in "
                  f"{body['seconds_this_run'] / 60:.0f} min ({body['epochs']} epochs, {body['steps']} steps "
                  f"of {body['batch_size']} sequences of 128 tokens); masked-token accuracy on its 512 "
                  "held-out sequences after each epoch: "
                  + ", ".join(f"{v:.3f}" for v in body["validation_mlm_accuracy"]) + "."]
    for task, rows in results["tasks"].items():
        lines += ["", f"**{task}**: {rows['train_examples']} training, {rows['test_examples']} test "
                      "examples.", "", "| model | test accuracy | training time |", "|---|---:|---:|"]
        lines += [f"| {name} | {row['accuracy']:.4f} | {row['seconds']:.0f} s |"
                  for name, row in rows["full"].items()]
        lines += ["", "On the first 500 training examples (16 epochs):", "",
                  "| model | test accuracy |", "|---|---:|"]
        lines += [f"| {name} | {row['accuracy']:.4f} |" for name, row in rows["500"].items()]
    return "\n".join(lines)


def print_demo_comparison(report):
    """`make demo`: this run's held-out accuracy next to the figures of the
    last quality benchmark on the same split."""
    summary = json.loads(Path(report).read_text())
    rows = json.loads(QUALITY_JSON.read_text())["tasks"]["sentiment (Rotten Tomatoes snippets)"]
    print(f"\nHeld-out accuracy on the {summary['examples']['evaluated']} test snippets:")
    print(f"  {summary['accuracy']:.4f}  this run: TextClassifier fine-tuned from "
          f"{summary.get('preset') or 'scratch'}")
    for name, row in rows["full"].items():
        print(f"  {row['accuracy']:.4f}  {name} (bench/zoo_text.py, {QUALITY_JSON.name})")


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
            sequence_length=sequence_length, start_value=ours.preprocessor.start_id,
            end_value=ours.preprocessor.end_id, pad_value=0, return_padding_mask=False,
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
    parser.add_argument("--part", choices=("all", "speed", "quality"), default="all")
    parser.add_argument("--demo-report", help="print a `make demo` report next to the last "
                        "quality figures, and run nothing")
    args = parser.parse_args()
    if args.demo_report:
        return print_demo_comparison(args.demo_report)
    if args.part in ("all", "quality"):
        results = quality(args.quick)
        print(f"wrote {update_section('Text classifier: quality against the alternatives', quality_section(results))}")
    if args.part in ("all", "speed"):
        speed(args.quick)


def speed(quick):
    (texts, labels), _ = load_sentiment()
    texts = texts.astype(str)

    keras.utils.set_random_seed(0)
    ours = TextClassifier(labels=["rotten", "fresh"], **DEMO_ARCHITECTURE)
    ours.adapt(texts[:2000])
    count = 640 if quick else 3200
    repeats = 2 if quick else 3
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
    ])
    print(f"wrote {update_section('Text classifier', body)}")


if __name__ == "__main__":
    try:
        main()
    finally:
        QUIET.__exit__(None, None, None)
