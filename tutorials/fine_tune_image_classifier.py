"""Tutorial: fine-tune the shipped ViT on a folder of your own images, then serve it.

Steps:
1. Your data: a folder with one sub-folder per class, holding PNG, JPEG, BMP
   or GIF files of any size, grayscale or colour. Here we write one from
   digits the shipped preset never saw (the embedded held-out split), with
   labels of our own: "even" and "odd".
2. Load the pretrained `mnist_vit_micro` preset with your labels: the
   pretrained body is kept, the head is fresh because the labels differ.
3. Fine-tune with `fit` on the folder; evaluate on a held-out folder; print a
   report.
4. Export a versioned SavedModel and send it PNG bytes the way TF Serving's
   REST API takes them (`{"b64": ...}`), from a process that imports only
   tensorflow.

Run: `python tutorials/fine_tune_image_classifier.py [--fast]`.
"""

import argparse
import base64
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from zoo import ImageClassifier, report  # noqa: E402
from zoo.datasets import load_digits  # noqa: E402
from zoo.serving_client import rest_in_fresh_process  # noqa: E402


def write_your_folder(folder, images, labels):
    """Stands in for your own images: `folder/<label>/<n>.png`."""
    for index, (image, label) in enumerate(zip(images, labels)):
        (folder / label).mkdir(parents=True, exist_ok=True)
        (folder / label / f"{index}.png").write_bytes(tf.io.encode_png(image[..., None]).numpy())
    return folder


def main(fast=False, work=None):
    keras.utils.set_random_seed(0)
    work = Path(work or tempfile.mkdtemp(prefix="fine_tune_images_"))
    _, (images, digits) = load_digits()  # never seen by the preset
    parity = np.where(digits % 2 == 0, "even", "odd")
    count, held = (64, 80) if fast else (300, 200)
    train = write_your_folder(work / "train", images[:count], parity[:count])
    held_out = write_your_folder(work / "held_out", images[count:count + held],
                                 parity[count:count + held])

    print("Shipped presets:", sorted(ImageClassifier.presets))
    model = ImageClassifier.from_preset("mnist_vit_micro", labels=["even", "odd"])
    model.compile(optimizer=keras.optimizers.AdamW(5e-4, weight_decay=0.05))
    model.fit(train, epochs=2 if fast else 8, batch_size=32, verbose=2)

    inputs, labels = model.raw_examples(held_out)
    predicted, _ = model.predict_labels(inputs)
    summary = report.classification_report(
        model.label_ids(labels), model.label_ids(predicted), model.display_labels()
    )
    print(report.format_report(summary))

    version = model.export(work / "served")
    print(f"Exported to {version}")
    pngs = sorted((held_out / "odd").glob("*.png"))[:2] + sorted((held_out / "even").glob("*.png"))[:2]
    request = json.dumps({"signature_name": "serving_default", "instances": [
        {"b64": base64.b64encode(p.read_bytes()).decode()} for p in pngs]})
    answer = rest_in_fresh_process(work / "served", request)
    for path, row in zip(pngs, answer["predictions"]):
        print(f"  {path.parent.name}/{path.name}: {row['label']} ({max(row['probabilities']):.2f})")
    return summary["accuracy"]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="a small run for the tests")
    parser.add_argument("--work", help="folder for the images and the export")
    args = parser.parse_args()
    main(args.fast, args.work)
