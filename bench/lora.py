"""LoRA against full fine-tuning of MiniLM on the embedded sentiment split.

Each configuration runs in a fresh process: `TextClassifier.from_preset(
"all_minilm_l6_v2", lora_rank=R)` (or every weight, `lora_rank=None`),
AdamW with the recipe's warm-up and cosine decay (`CHECKPOINT_FINE_TUNING`'s
steps; peak 1e-4 for every weight, `LORA_LEARNING_RATE` for adapters), the
training split in batches of 32. Reports test accuracy, training examples
per second (after the first 20 steps, which trace the step), the size of a
checkpoint (`zoo.lora.save_training_state`: weights and AdamW state, or
adapters, head and their AdamW state), the process's peak resident memory,
and the exported SavedModel's throughput answering 128 reviews a request in
a process that imports only TensorFlow and tensorflow-text, with the largest
difference of its answers from `predict`'s. Writes the section "LoRA
fine-tuning" of RESULTS.md.

    python bench/lora.py [--ranks 8] [--epochs 2]
"""

import argparse
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

CHILD = """
import json, os, resource, sys, time
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
sys.path.insert(0, {repo!r})
import keras, numpy as np
from zoo import TextClassifier
from zoo.datasets import load_sentiment
from zoo.lora import LORA_LEARNING_RATE, save_training_state
from zoo.text_classifier.train import CHECKPOINT_FINE_TUNING, fine_tuning_schedule

rank, epochs, folder, lora_rate = json.loads(sys.argv[1])
(texts, labels), (test_texts, test_labels) = load_sentiment()
names = np.array(["rotten", "fresh"])
keras.utils.set_random_seed(0)
model = TextClassifier.from_preset("all_minilm_l6_v2", labels=list(names), lora_rank=rank)
rate = (lora_rate or LORA_LEARNING_RATE) if rank else CHECKPOINT_FINE_TUNING["learning_rate"]
model.compile(optimizer=keras.optimizers.AdamW(
    fine_tuning_schedule(len(texts), 32, epochs, rate, CHECKPOINT_FINE_TUNING),
    weight_decay=0.01))

class Clock(keras.callbacks.Callback):
    def __init__(self):
        self.steps, self.start = 0, None
    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        if self.steps == 20:
            self.start, self.counted = time.perf_counter(), 0
        elif self.start is not None:
            self.counted += 1

clock = Clock()
model.fit(texts, names[labels], epochs=epochs, batch_size=32, verbose=0, callbacks=[clock])
seconds = time.perf_counter() - clock.start
examples_per_second = clock.counted * 32 / seconds
accuracy = float(model.evaluate(test_texts, names[test_labels], batch_size=128, verbose=0)[1])
trainable = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
checkpoint = save_training_state(model, os.path.join(folder, "state.weights.h5"))
export = model.export(os.path.join(folder, "export"))
probabilities = model.predict(test_texts[:128], batch_size=128, verbose=0)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print("RESULT " + json.dumps(dict(
    accuracy=accuracy, examples_per_second=examples_per_second,
    checkpoint_bytes=os.path.getsize(checkpoint), peak=peak, trainable=trainable,
    export=str(export), texts=[str(t) for t in test_texts[:128]],
    probabilities=np.asarray(keras.ops.softmax(probabilities)).tolist())))
"""

# The server's side: a process that imports only TensorFlow and
# tensorflow-text, as TF Serving links them.
SERVE = """
import json, sys, time
import numpy as np
import tensorflow as tf
import tensorflow_text  # noqa: F401

export, texts = json.loads(sys.argv[1])
serve = tf.saved_model.load(export).signatures["serving_default"]
batch = tf.constant(texts)
answer = serve(text=batch)
start, calls = time.perf_counter(), 10
for _ in range(calls):
    serve(text=batch)
seconds = (time.perf_counter() - start) / calls
print("RESULT " + json.dumps(dict(probabilities=answer["probabilities"].numpy().tolist(),
                                  examples_per_second=len(texts) / seconds)))
"""


def _run(template, arguments):
    from results import run_measurement

    return run_measurement(template.format(repo=str(REPO)), arguments)


def main(argv=None):
    import numpy as np
    from results import update_section

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", default="8", help="comma-separated LoRA ranks")
    parser.add_argument("--lora-learning-rate", type=float,
                        help="peak learning rate of the adapters (default LORA_LEARNING_RATE)")
    parser.add_argument("--no-full", dest="full", action="store_false",
                        help="only the LoRA ranks (printed; RESULTS.md left as it is)")
    parser.add_argument("--epochs", type=int, default=2,
                        help="epochs of each (2: the recipe's 250 steps on the sentiment split)")
    args = parser.parse_args(argv)
    ranks = [None] * args.full + [int(r) for r in args.ranks.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for rank in ranks:
            work = Path(folder) / f"rank-{rank}"
            work.mkdir()
            row = _run(CHILD, [rank, args.epochs, str(work), args.lora_learning_rate])
            served = _run(SERVE, [row["export"], row["texts"]])
            row["served_difference"] = float(np.abs(np.array(served["probabilities"])
                                                    - np.array(row["probabilities"])).max())
            row["served_per_second"] = served["examples_per_second"]
            name = "full fine-tuning" if rank is None else f"LoRA rank {rank}"
            print(f"{name}: accuracy {row['accuracy']:.4f}, {row['examples_per_second']:.1f} "
                  f"examples/s, checkpoint {row['checkpoint_bytes'] / 2**20:.1f} MiB, peak "
                  f"{row['peak'] / 2**30:.2f} GiB, {row['trainable']} trainable, served "
                  f"{row['served_per_second']:.0f}/s (max difference from predict "
                  f"{row['served_difference']:.1e})", flush=True)
            rows.append((name, row))
    if not args.full:
        return
    full = rows[0][1]
    from zoo.lora import LORA_LEARNING_RATE

    lora_rate = args.lora_learning_rate or LORA_LEARNING_RATE
    lines = [
        f"`python bench/lora.py --ranks {args.ranks} --epochs {args.epochs}"
        + (f" --lora-learning-rate {lora_rate:g}" if args.lora_learning_rate else "") + "` "
        f"({os.cpu_count()} CPU cores): MiniLM (`all_minilm_l6_v2`) fine-tuned on the embedded "
        f"sentiment training split ({args.epochs} epochs, batch 32, warm-up and cosine decay; "
        f"peak learning rate 1e-4 for every weight, {lora_rate:g} for adapters), each in a "
        "fresh process. "
        "Accuracy on the fixed test split; training examples/s after the first 20 steps; the "
        "checkpoint a run writes (`zoo.lora.save_training_state`: the weights with AdamW's "
        "state, or the adapters and the head with theirs); the process's peak resident memory; "
        "the exported SavedModel (adapters merged) answering 128 reviews a request in a "
        "process importing only TensorFlow and tensorflow-text, and the largest difference of "
        "its probabilities from `predict`'s. The adapters' rate is `zoo.lora.LORA_LEARNING_RATE`, "
        "chosen on this split (its comment gives the rates tried).",
        "",
        "| fine-tuning | trainable weights | test accuracy | examples/s | checkpoint | "
        "peak memory | served examples/s | served - predict |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in rows:
        accuracy = f"{row['accuracy']:.4f}"
        if row is not full:
            accuracy += f" ({100 * (row['accuracy'] - full['accuracy']):+.1f} pt)"
        lines.append(
            f"| {name} | {row['trainable']:,} | {accuracy} | {row['examples_per_second']:.1f} | "
            f"{row['checkpoint_bytes'] / 2**20:.1f} MiB | {row['peak'] / 2**30:.2f} GiB | "
            f"{row['served_per_second']:.0f} | {row['served_difference']:.1e} |")
    update_section("LoRA fine-tuning", "\n".join(lines))


if __name__ == "__main__":
    main()
