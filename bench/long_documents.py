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
- the same under Keras's `mixed_bfloat16` policy (activations in bfloat16,
  weights and the head in float32).

The task: documents of at least 4,000 WordPiece tokens, each made of sentiment
snippets of the embedded data drawn so that 65% share one label, which is the
document's label; the first 512 tokens hold about 19 snippets, the whole
document about 150. Reports seconds per training step (batch 2, after a
warm-up step), peak memory, and with `--epochs` test accuracy. Writes the
section "Long documents" of RESULTS.md.

    python bench/long_documents.py [--steps 4] [--epochs 0] [--documents 40]
"""

import argparse
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

CONFIGURATIONS = {
    "truncated at 512": dict(sequence_length=512),
    "local_window 256": dict(sequence_length=4096, attention="local_window", window_size=256),
    "local_window 256 + 1 global token": dict(sequence_length=4096, attention="local_window",
                                              window_size=256, global_tokens=1),
    "local_window 256 + 1 global token, mixed_bfloat16": dict(
        sequence_length=4096, attention="local_window", window_size=256, global_tokens=1,
        precision="mixed_bfloat16"),
}
BATCH = 2
TOKENS = 4000
SHARE = 0.65

RUN = """
import json, os, resource, sys, time
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
sys.path.insert(0, {repo!r})
import keras, numpy as np
from zoo import TextClassifier
from zoo.datasets import load_sentiment
from zoo.text_classifier.train import fine_tuning_schedule, CHECKPOINT_FINE_TUNING

options, steps, epochs, documents = json.loads(sys.argv[1])
if options.get("precision"):
    keras.mixed_precision.set_global_policy(options.pop("precision"))
(texts, labels), (test_texts, test_labels) = load_sentiment()
keras.utils.set_random_seed(0)
model = TextClassifier.from_preset("all_minilm_l6_v2", labels=["rotten", "fresh"], **options)

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

train = documents_of(texts, labels, documents, 0)
test = documents_of(test_texts, test_labels, max(20, documents // 2), 1)
model.compile(optimizer=keras.optimizers.AdamW(
    fine_tuning_schedule(len(train[0]), {batch}, max(epochs, 1),
                         recipe=CHECKPOINT_FINE_TUNING), weight_decay=0.01))
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
accuracy = None
if epochs:
    model.fit(train[0], train[1], epochs=epochs, batch_size={batch}, verbose=0)
    accuracy = float(model.evaluate(test[0], test[1], batch_size={batch}, verbose=0)[1])
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print("RESULT " + json.dumps(dict(tokens=int(ids.shape[1]), seconds=seconds, peak=peak,
                                  above_baseline=peak - baseline,
                                  accuracy=accuracy, test_documents=len(test[0]))))
"""


def measure(options, steps, epochs, documents):
    code = textwrap.dedent(RUN.format(repo=str(REPO), tokens=TOKENS, share=SHARE, batch=BATCH))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run([sys.executable, "-c", code,
                           json.dumps([options, steps, epochs, documents])],
                          capture_output=True, text=True, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(lines[-1][len("RESULT "):])


def main(argv=None):
    from results import update_section

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=0,
                        help="also fine-tune for this many epochs and report test accuracy")
    parser.add_argument("--documents", type=int, default=40, help="training documents")
    parser.add_argument("--only", help="measure only the configurations whose name holds this "
                        "(printed, RESULTS.md left as it is)")
    args = parser.parse_args(argv)
    rows = {}
    for name, options in CONFIGURATIONS.items():
        if args.only and args.only not in name:
            continue
        rows[name] = measure(options, args.steps, args.epochs, args.documents)
        row = rows[name]
        accuracy = "" if row["accuracy"] is None else f", accuracy {row['accuracy']:.3f}"
        print(f"{name}: {row['tokens']} tokens, {row['seconds']:.2f} s/step, "
              f"peak {row['peak'] / 2**30:.2f} GiB ({row['above_baseline'] / 2**30:.2f} GiB "
              f"above the loaded model){accuracy}", flush=True)
    if args.only:
        return
    lines = [
        f"`python bench/long_documents.py --steps {args.steps} --epochs {args.epochs}` "
        f"({os.cpu_count()} CPU cores). MiniLM (`all_minilm_l6_v2`) fine-tuned with batch "
        f"{BATCH} on documents of at least {TOKENS} WordPiece tokens made of sentiment snippets, "
        f"{SHARE:.0%} of one label (the document's); seconds per training step after a "
        "warm-up step; peak memory is the process's maximum resident set (TensorFlow, the "
        "model and the optimizer included), each configuration in its own process, and what "
        "training added to the resident set of the loaded, compiled model (as "
        "`bench/layers.py` counts). `local_window` trains without attention-weight dropout "
        "(the backbone's default for it), so it takes the blocked band kernel.",
        "",
        "| configuration | tokens per document | s/step | peak memory | added by training | "
        "test accuracy |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, row in rows.items():
        accuracy = "not run" if row["accuracy"] is None else \
            f"{row['accuracy']:.3f} ({row['test_documents']} documents)"
        lines.append(f"| {name} | {row['tokens']} | {row['seconds']:.2f} | "
                     f"{row['peak'] / 2**30:.2f} GiB | {row['above_baseline'] / 2**30:.2f} GiB | "
                     f"{accuracy} |")
    update_section("Long documents", "\n".join(lines))


if __name__ == "__main__":
    main()
