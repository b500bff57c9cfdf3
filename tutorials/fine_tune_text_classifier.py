"""Tutorial: fine-tune the shipped text body on your own CSV, then export it for TF Serving.

Steps:
1. Your data: a CSV with a text column and a label column. Here we write one
   from the embedded review snippets, with labels of our own ("liked",
   "disliked"); any labels and any number of classes work.
2. Put a fresh head for your labels on `english_body_small`, the general
   English body pretrained as a masked language model by
   `python -m zoo.text_encoder.pretrain` (a sentiment classifier preset,
   `rotten_tomatoes_small`, loads the same way).
3. Fine-tune with `fit` on raw strings (a small learning rate after a short
   warm-up); evaluate; print a report.
4. Export a versioned SavedModel and query it the way TF Serving's REST API is
   queried, from a process that imports only tensorflow and tensorflow_text.

Run: `python tutorials/fine_tune_text_classifier.py [--fast]`.
"""

import argparse
import csv
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

from zoo import TextClassifier, report  # noqa: E402
from zoo.data import read_labelled_texts  # noqa: E402
from zoo.datasets import load_sentiment  # noqa: E402
from zoo.serving_client import rest_in_fresh_process  # noqa: E402
from zoo.training import warmup_cosine  # noqa: E402


def write_your_csv(path, count):
    """Stands in for your own data: a CSV with `text` and `label` columns."""
    (texts, labels), _ = load_sentiment(seed=1)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for text, label in zip(texts[:count], labels[:count]):
            writer.writerow([text, "liked" if label else "disliked"])


def main(fast=False, work=None):
    keras.utils.set_random_seed(0)
    work = Path(work or tempfile.mkdtemp(prefix="fine_tune_"))
    data_file = work / "my_reviews.csv"
    write_your_csv(data_file, 120 if fast else 1500)

    texts, labels = read_labelled_texts(data_file)
    cut = int(len(texts) * 0.8)
    train, held_out = (texts[:cut], labels[:cut]), (texts[cut:], labels[cut:])

    print("Shipped presets and bodies:", sorted(TextClassifier.named_presets()))
    model = TextClassifier.from_preset("english_body_small", labels=["disliked", "liked"])
    epochs = 1 if fast else 3
    steps = epochs * -(-len(train[0]) // 32)
    model.compile(optimizer=keras.optimizers.AdamW(warmup_cosine(3e-4, steps), weight_decay=0.01))
    model.fit(*train, epochs=epochs, batch_size=32, verbose=2)

    predicted, _ = model.predict_labels(held_out[0])
    summary = report.classification_report(
        model.label_ids(held_out[1]), model.label_ids(predicted), model.display_labels()
    )
    print(report.format_report(summary))

    version = model.export(work / "served")
    print(f"Exported to {version}")
    request = json.dumps({"signature_name": "serving_default",
                          "instances": ["I loved every minute.", "A waste of an evening."]})
    answer = rest_in_fresh_process(work / "served", request)
    for row in answer["predictions"]:
        print(f"  {row['label']:>8}  {max(row['probabilities']):.2f}")
    return summary["accuracy"]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="a small run for the tests")
    parser.add_argument("--work", help="folder for the CSV and the export")
    args = parser.parse_args()
    main(args.fast, args.work)
