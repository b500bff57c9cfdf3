"""Fine-tuning defaults on small data: MiniLM through `train_text_classifier`
on 100, 300 and 1,000 labelled texts, as a user's CSV file would give them.

Each size is the first N examples of a seeded shuffle of an embedded task's
training split, written to a CSV file; the job splits off its usual 10% for
validation and trains with the default recipe (or a variant's epochs and
learning rate). Test accuracy is measured on the task's fixed held-out split
(its first `--test-examples`), with the share of the majority predicted
class, which is 1.0 when a model predicts one class for everything.
`--from-scratch` rows train the demo's small network instead, as the
command line's `--from-scratch` does. Writes the section "Text classifier:
fine-tuning on small data" of RESULTS.md.

    python bench/small_data.py [--sizes 100,300,1000] [--seeds 0,1]
"""

import argparse
import csv
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from results import update_section  # noqa: E402
from zoo.datasets import load_definitions, load_sentiment  # noqa: E402
from zoo.text_classifier import train as text_training  # noqa: E402
from zoo.training_run import TrainingRun  # noqa: E402

BATCH = 32


def sentiment():
    (texts, labels), (test_texts, test_labels) = load_sentiment()
    names = np.array(["rotten", "fresh"])
    return (texts, names[labels]), (test_texts, names[test_labels])


TASKS = {"sentiment": sentiment, "topic": load_definitions}


def write_csv(path, texts, labels):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(zip(texts, labels))


def fine_tune(csv_path, out, variant):
    """Trains like `python -m zoo train text-classifier --data CSV` with the
    variant's overrides; returns `(model, summary, seconds)`."""
    from zoo import TextClassifier

    options = dict(variant.get("options", {}))
    if variant.get("from_scratch"):
        options["from_scratch"] = True
    start = time.perf_counter()
    summary = text_training.train_text_classifier(
        str(csv_path), out, batch_size=BATCH, verbose=0,
        run=TrainingRun(export=False, figures=False, attention_statistics=False), **options).report
    seconds = time.perf_counter() - start
    return TextClassifier.from_preset(str(Path(out) / "preset")), summary, seconds


def test_scores(model, texts, labels):
    names, _ = model.predict_labels(texts, batch_size=128)
    names = np.asarray(names)
    _, counts = np.unique(names, return_counts=True)
    return float(np.mean(names == np.asarray(labels))), float(counts.max() / len(names))


# Names without commas: `--variants` is a comma-separated list of them.
VARIANTS = {
    "default": {},
    "every epoch (patience 0)": {"options": {"patience": 0}},
    "patience 5": {"options": {"patience": 5}},
    "peak 2e-4": {"options": {"learning_rate": 2e-4}},
    "peak 5e-5": {"options": {"learning_rate": 5e-5}},
    "250 steps (at most 40 epochs)": {"rule": {"min_steps": 250, "max_epochs": 40}},
    "--from-scratch": {"from_scratch": True},
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,300,1000")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--tasks", default="sentiment,topic")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help="comma-separated names of VARIANTS")
    parser.add_argument("--test-examples", type=int, default=1000)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    variants = [v for v in VARIANTS if v in args.variants.split(",")]

    rows = []
    for task in args.tasks.split(","):
        (texts, labels), (test_texts, test_labels) = TASKS[task]()
        test_texts, test_labels = test_texts[:args.test_examples], test_labels[:args.test_examples]
        for size in sizes:
            for name in variants:
                variant = VARIANTS[name]
                scores = []
                for seed in seeds:
                    order = np.random.default_rng(seed).permutation(len(texts))[:size]
                    rule = text_training.CHECKPOINT_FINE_TUNING
                    text_training.CHECKPOINT_FINE_TUNING = {**rule, **variant.get("rule", {})}
                    try:
                        with tempfile.TemporaryDirectory() as work:
                            write_csv(Path(work) / "data.csv", texts[order], labels[order])
                            model, summary, seconds = fine_tune(
                                Path(work) / "data.csv", Path(work) / "run", variant)
                    finally:
                        text_training.CHECKPOINT_FINE_TUNING = rule
                    accuracy, majority = test_scores(model, test_texts, test_labels)
                    scores.append((accuracy, majority, summary["epochs_trained"],
                                   summary["steps"]["total"], seconds))
                    print(f"{task} {size} {name} seed {seed}: test accuracy {accuracy:.4f}, "
                          f"majority share {majority:.2f}, {summary['epochs_trained']} of "
                          f"{summary['epochs']} epochs, "
                          f"{summary['steps']['total']} steps, {seconds:.0f} s", flush=True)
                mean = np.mean(scores, axis=0)
                rows.append((task, size, name, [s[0] for s in scores], mean[1], scores[0][2],
                             scores[0][3], mean[4]))
    if args.no_write:
        return
    import keras
    import platform
    import tensorflow as tf

    lines = [
        f"Latest run: {time.strftime('%Y-%m-%d')}, `python bench/small_data.py --sizes "
        f"{args.sizes} --seeds {args.seeds}` on {platform.machine()} with {os.cpu_count()} CPU "
        f"cores; TensorFlow {tf.__version__}, Keras {keras.__version__}.",
        "",
        "MiniLM (`all_minilm_l6_v2`) fine-tuned as `python -m zoo train text-classifier --data "
        "FILE.csv` does, on the first N examples of a seeded shuffle of the embedded training "
        "split (90% trained on, 10% validation); test accuracy on the first "
        f"{args.test_examples} examples of the fixed test split, one column per seed; "
        "\"one class\" is the share of test predictions that went to the most predicted class "
        "(1.00: the model predicts one class for everything).",
        "",
        "| task | examples | recipe | test accuracy | one class | epochs | steps | seconds |",
        "|---|---:|---|---|---:|---:|---:|---:|",
    ]
    for task, size, name, accuracies, majority, epochs, steps, seconds in rows:
        lines.append(f"| {task} | {size} | {name} | {', '.join(f'{a:.3f}' for a in accuracies)} "
                     f"| {majority:.2f} | {epochs} | {steps} | {seconds:.0f} |")
    update_section("Text classifier: fine-tuning on small data", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
