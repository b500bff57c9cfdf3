"""Long documents on a converted checkpoint: truncation, a sliding window, and
a window with global attention, at 4096 tokens.

Each configuration fine-tunes MiniLM (`all_minilm_l6_v2`) in a process of its
own, so that its peak memory (the process's maximum resident set, the whole
of TensorFlow included) is its own:

- `truncated`: the checkpoint as it is, texts cut at its 512 positions;
- `window`: `sequence_length=4096`, `attention="local_window"`, `window_size=256`
  (positions tiled from the checkpoint's 512);
- `window + global`: the same with `global_tokens=1`: `[CLS]` attends to every
  token and every token to it (Longformer);
- with `rematerialize=True` (each block's activations recomputed in the
  backward pass), and under Keras's `mixed_bfloat16` policy (activations in
  bfloat16, weights and the head in float32).

The task: documents of at least 4,000 WordPiece tokens, each made of sentiment
snippets of the embedded data drawn so that 65% share one label, which is the
document's label; the first 512 tokens hold about 19 snippets, the whole
document about 150. Reports seconds per training step (batch 2, after a
warm-up step) and peak memory. Accuracy: MiniLM is fine-tuned once on single
reviews (64 tokens), then that network reads the test documents truncated, with
the window, and with the global token, untrained on documents: fine-tuning at
4,096 tokens long enough to compare lengths takes hours on 2 CPU cores. Writes
the section "Long documents" of RESULTS.md.

    python bench/long_documents.py [--steps 3] [--reviews 4096] [--documents 60]
"""

import argparse
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

LONG = dict(sequence_length=4096, attention="local_window", window_size=256)
GLOBAL = dict(LONG, global_tokens=1)
CONFIGURATIONS = {
    "truncated at 512": dict(sequence_length=512),
    "local_window 256": LONG,
    "local_window 256 + 1 global token": GLOBAL,
    "local_window 256 + 1 global token, rematerialize": dict(GLOBAL, rematerialize=True),
    "local_window 256 + 1 global token, mixed_bfloat16": dict(GLOBAL, precision="mixed_bfloat16"),
    "local_window 256 + 1 global token, mixed_bfloat16, rematerialize": dict(
        GLOBAL, precision="mixed_bfloat16", rematerialize=True),
}
# The comparison of reading lengths; the other rows run the same network.
ACCURACY_OF = ("truncated at 512", "local_window 256", "local_window 256 + 1 global token")
BATCH = 2
TOKENS = 4000
SHARE = 0.65

SHORT_FINE_TUNING = """
import json, os, sys
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
sys.path.insert(0, {repo!r})
import keras
from zoo import TextClassifier
from zoo.datasets import load_sentiment
from zoo.text_classifier.train import fine_tuning_schedule, CHECKPOINT_FINE_TUNING

folder, reviews = json.loads(sys.argv[1])
(texts, labels), (test_texts, test_labels) = load_sentiment()
names = ["rotten", "fresh"]
keras.utils.set_random_seed(0)
model = TextClassifier.from_preset("all_minilm_l6_v2", labels=names, sequence_length=64)
model.compile(optimizer=keras.optimizers.AdamW(
    fine_tuning_schedule(reviews, 32, 1, recipe=CHECKPOINT_FINE_TUNING), weight_decay=0.01))
model.fit(texts[:reviews], [names[i] for i in labels[:reviews]], epochs=1, batch_size=32,
          verbose=0)
accuracy = model.evaluate(test_texts, [names[i] for i in test_labels], batch_size=64,
                          verbose=0)[1]
model.save_to_preset(folder)
print("RESULT " + json.dumps(dict(accuracy=float(accuracy))))
"""

RUN = """
import json, os, resource, sys, time
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
sys.path.insert(0, {repo!r})
import keras, numpy as np
from zoo import TextClassifier
from zoo.datasets import load_sentiment
from zoo.text_classifier.train import fine_tuning_schedule, CHECKPOINT_FINE_TUNING

source, options, measure, steps, documents = json.loads(sys.argv[1])
if options.get("precision"):
    keras.mixed_precision.set_global_policy(options.pop("precision"))
(texts, labels), (test_texts, test_labels) = load_sentiment()
keras.utils.set_random_seed(0)
model = TextClassifier.from_preset(source, labels=["rotten", "fresh"], **options)

def documents_of(texts, labels, count, seed):
    rng = np.random.default_rng(seed)
    lengths = np.array([len(t) for t in model.preprocessor.tokenize(list(texts)).to_list()])
    pools = [np.flatnonzero(labels == value) for value in (0, 1)]
    out, names = [], []
    for index in range(count):
        label = index % 2
        parts, tokens = [], 0
        while tokens < {tokens}:
            side = label if rng.random() < {share} else 1 - label
            pick = rng.choice(pools[side])
            parts.append(str(texts[pick]))
            tokens += lengths[pick]
        out.append(" ".join(parts))
        names.append(["rotten", "fresh"][label])
    return np.array(out), np.array(names)

if measure == "accuracy":
    test = documents_of(test_texts, test_labels, documents, 1)
    model.compile()
    accuracy = float(model.evaluate(test[0], test[1], batch_size={batch}, verbose=0)[1])
    print("RESULT " + json.dumps(dict(accuracy=accuracy, test_documents=len(test[0]))))
    sys.exit()
train = documents_of(texts, labels, {batch}, 0)
model.compile(optimizer=keras.optimizers.AdamW(
    fine_tuning_schedule(len(train[0]), {batch}, 1, recipe=CHECKPOINT_FINE_TUNING),
    weight_decay=0.01))
ids = model.preprocess(train[0][:{batch}])
batch_labels = model.label_ids(train[1][:{batch}])
def resident():
    with open("/proc/self/status") as status:
        return next(int(l.split()[1]) * 1024 for l in status if l.startswith("VmRSS"))

baseline = resident()  # the model, its optimizer and TensorFlow, before any step
model.train_on_batch(ids, batch_labels)  # traces the step
start = time.perf_counter()
for _ in range(steps):
    model.train_on_batch(ids, batch_labels)
seconds = (time.perf_counter() - start) / steps
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print("RESULT " + json.dumps(dict(tokens=int(ids.shape[1]), seconds=seconds, peak=peak,
                                  above_baseline=peak - baseline)))
"""


def _run(template, arguments):
    from results import run_measurement

    return run_measurement(template.format(repo=str(REPO), tokens=TOKENS, share=SHARE,
                                           batch=BATCH), arguments)


def measure(options, steps, source="all_minilm_l6_v2"):
    """Seconds per training step and peak memory of one configuration."""
    return _run(RUN, [source, options, "speed", steps, 0])


def accuracy(options, source, documents):
    """Test accuracy of one configuration on `documents` long test documents."""
    return _run(RUN, [source, options, "accuracy", 0, documents])


def main(argv=None):
    from results import update_section

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="timed training steps")
    parser.add_argument("--reviews", type=int, default=4096,
                        help="short reviews MiniLM is fine-tuned on before reading documents")
    parser.add_argument("--documents", type=int, default=60, help="test documents")
    parser.add_argument("--no-accuracy", dest="accuracy", action="store_false")
    parser.add_argument("--only", help="measure only the configurations whose name holds this "
                        "(printed, RESULTS.md left as it is)")
    args = parser.parse_args(argv)
    chosen = {name: options for name, options in CONFIGURATIONS.items()
              if not args.only or args.only in name}
    short = None
    with tempfile.TemporaryDirectory() as folder:
        if args.accuracy and set(chosen) & set(ACCURACY_OF):
            short = _run(SHORT_FINE_TUNING, [folder + "/short", args.reviews])
            print(f"fine-tuned on {args.reviews} reviews at 64 tokens: review test accuracy "
                  f"{short['accuracy']:.4f}", flush=True)
        rows = {}
        for name, options in chosen.items():
            row = rows[name] = measure(options, args.steps)
            if short and name in ACCURACY_OF:
                row.update(accuracy(options, folder + "/short", args.documents))
            read = f", accuracy {row['accuracy']:.3f}" if "accuracy" in row else ""
            print(f"{name}: {row['tokens']} tokens, {row['seconds']:.2f} s/step, "
                  f"peak {row['peak'] / 2**30:.2f} GiB ({row['above_baseline'] / 2**30:.2f} GiB "
                  f"above the loaded model){read}", flush=True)
    if args.only:
        return
    lines = [
        f"`python bench/long_documents.py --steps {args.steps} --reviews {args.reviews} "
        f"--documents {args.documents}` ({os.cpu_count()} CPU cores). MiniLM "
        "(`all_minilm_l6_v2`) on documents of at least "
        f"{TOKENS} WordPiece tokens made of sentiment snippets, {SHARE:.0%} of one label (the "
        "document's): the first 512 tokens hold about 19 snippets, the whole document about "
        "150.",
        "",
        f"- **Speed and memory**: fine-tuning with batch {BATCH}; seconds per training step "
        "after a warm-up step; peak memory is the process's maximum resident set (TensorFlow, "
        "the model and the optimizer included), each configuration in its own process, and "
        "what training added to the resident set of the loaded, compiled model (as "
        "`bench/layers.py` counts). `local_window` trains without attention-weight dropout "
        "(the backbone's default for it), so it takes the blocked band kernel; "
        "`rematerialize` recomputes each block's activations in the backward pass.",
        f"- **Accuracy**: MiniLM fine-tuned once on {args.reviews} single reviews at 64 tokens "
        f"(1 epoch, review test accuracy {short['accuracy']:.4f}), then the same network reads "
        f"{args.documents} test documents in each configuration, with no training on "
        "documents: what reading the whole document adds over its first 512 tokens."
        if short else "- **Accuracy**: not run (`--no-accuracy`).",
        "",
        "| configuration | tokens per document | s/step | peak memory | added by training | "
        "test accuracy |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, row in rows.items():
        read = f"{row['accuracy']:.3f}" if "accuracy" in row else "as above"
        lines.append(f"| {name} | {row['tokens']} | {row['seconds']:.2f} | "
                     f"{row['peak'] / 2**30:.2f} GiB | {row['above_baseline'] / 2**30:.2f} GiB | "
                     f"{read} |")
    update_section("Long documents", "\n".join(lines))


if __name__ == "__main__":
    main()
