"""ImageClassifier: training throughput against keras-hub's ViT, serving latency, fine-tuning.

- Throughput: images/s of `fit` for `ImageClassifier` and for keras-hub's
  `ViTBackbone` of the same sizes plus the same head (mean of the patch
  tokens, dense layer), both on the same preprocessed images in the same
  run, at the from-scratch MNIST sizes and at `vit_tiny_16`'s.
- Serving latency: per image through the exported `serving_default`
  (PNG bytes in), loaded as TF Serving loads it, for requests of 1 and 32.
- Fine-tuning: the shipped `mnist_vit_micro` preset with a fresh head
  ("even"/"odd") against the same architecture from scratch, both trained on
  the same 300 held-out digits the preset never saw, scored on 700 others.

Usage: `python bench/zoo_vit.py [--quick]`; writes its section of RESULTS.md.
"""

import argparse
import datetime
import os
import platform
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
from zoo import ImageClassifier  # noqa: E402
from zoo.datasets import load_digits  # noqa: E402
from zoo.image_classifier.image_classifier import CONFIGURATIONS  # noqa: E402
from zoo.presets import preset_config  # noqa: E402

BATCH = 64


def keras_hub_equivalent(config, num_classes):
    c = config
    images = keras.Input((*([c["image_size"]] * 2), c["channels"]))
    backbone = keras_hub.models.ViTBackbone(
        image_shape=(c["image_size"], c["image_size"], c["channels"]),
        patch_size=c["patch_size"], num_layers=c["num_layers"], num_heads=c["num_heads"],
        hidden_dim=c["hidden_dim"], mlp_dim=c["intermediate_dim"],
        use_class_token=c["pooling"] == "token",
    )
    tokens = backbone(images)
    pooled = tokens[:, 0] if c["pooling"] == "token" else keras.layers.GlobalAveragePooling1D()(tokens)
    return keras.Model(images, keras.layers.Dense(num_classes)(pooled))


def compare_throughput(name, count, repeats):
    config = CONFIGURATIONS[name]
    side, channels = config["image_size"], config["channels"]
    rng = np.random.default_rng(0)
    pixels = rng.random((count, side, side, channels), dtype=np.float32)
    labels = rng.integers(0, 10, count).astype("int32")
    keras.utils.set_random_seed(0)
    ours = ImageClassifier.from_configuration(name, num_classes=10, dropout=0.0)
    ours_rate = fit_throughput(ours, pixels, labels, BATCH, repeats)
    theirs = keras_hub_equivalent(config, 10)
    # As users get it (Keras's "auto": no XLA on a CPU-only machine), and with XLA.
    theirs_rate = fit_throughput(theirs, pixels, labels, BATCH, repeats)
    theirs_xla_rate = fit_throughput(theirs, pixels, labels, BATCH, repeats, jit_compile=True)
    parameters = (ours.count_params(), theirs.count_params())
    print(f"{name}: ImageClassifier {ours_rate:.1f}/s, keras-hub ViT {theirs_rate:.1f}/s "
          f"({theirs_xla_rate:.1f}/s with XLA), ratios {ours_rate / theirs_rate:.2f} and "
          f"{ours_rate / theirs_xla_rate:.2f} (parameters {parameters})", flush=True)
    return ours_rate, theirs_rate, theirs_xla_rate, parameters


def serving_latency(model, images, repeats=20):
    pngs = [tf.io.encode_png(image[..., None]).numpy() for image in images]
    with tempfile.TemporaryDirectory() as folder:
        version = model.export(Path(folder) / "served")
        serve = tf.saved_model.load(str(version)).signatures["serving_default"]
        latencies = {}
        for size in (1, 32):
            request = tf.constant(pngs[:size])
            serve(image_bytes=request)  # first call
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                serve(image_bytes=request)
                times.append(time.perf_counter() - start)
            latencies[size] = min(times) / size
    return latencies


def fine_tuning(test, epochs):
    images, digits = test
    parity = np.where(digits % 2 == 0, "even", "odd")
    train, evaluation = (images[:300], parity[:300]), (images[300:], parity[300:])
    results = {}
    keras.utils.set_random_seed(0)
    tuned = ImageClassifier.from_preset("mnist_vit_micro", labels=["even", "odd"])
    tuned.compile(optimizer=keras.optimizers.AdamW(5e-4, weight_decay=0.05))
    tuned.fit(*train, epochs=epochs, batch_size=32, verbose=0)
    results["preset body, fine-tuned"] = tuned.evaluate(*evaluation, verbose=0)[1]
    keras.utils.set_random_seed(0)
    config = {k: v for k, v in preset_config(tuned).items() if k not in ("num_classes",)}
    scratch = ImageClassifier(**{**config, "labels": ["even", "odd"]})
    scratch.compile(optimizer=keras.optimizers.AdamW(2e-3, weight_decay=0.05))
    scratch.fit(*train, epochs=epochs, batch_size=32, verbose=0)
    results["from scratch"] = scratch.evaluate(*evaluation, verbose=0)[1]
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    (train_images, _), test = load_digits()

    rows = {}
    rows["vit_micro_4_28"] = compare_throughput("vit_micro_4_28", 640 if args.quick else 2560,
                                                2 if args.quick else 3)
    if not args.quick:
        rows["vit_tiny_16"] = compare_throughput("vit_tiny_16", 128, 2)

    model = ImageClassifier.from_preset("mnist_vit_micro")
    latency = serving_latency(model, train_images[:32])
    print("serving latency per image: " + ", ".join(
        f"{1000 * v:.2f} ms in requests of {k}" for k, v in latency.items()), flush=True)

    accuracy = fine_tuning(test, epochs=3 if args.quick else 10)
    for name, value in accuracy.items():
        print(f"even/odd accuracy, {name}: {value:.4f}", flush=True)

    metadata = model.presets["mnist_vit_micro"] / "metadata.json"
    body = "\n".join([
        f"Latest run: {datetime.date.today().isoformat()}, `python bench/zoo_vit.py` on "
        f"{platform.machine()} with {os.cpu_count()} CPU cores; TensorFlow {tf.__version__}, "
        f"Keras {keras.__version__}, keras-hub {keras_hub.__version__}.",
        "",
        f"Training throughput, batch {BATCH}, float32, the same random images for both; keras-hub's "
        "`ViTBackbone` of the same sizes with the same head. `ImageClassifier.compile` turns XLA on "
        "by default on the CPU; Keras's `jit_compile=\"auto\"` leaves it off on a CPU-only machine, "
        "so keras-hub's model is measured both as users get it and with XLA forced on:",
        "",
        "| configuration | ImageClassifier (images/s) | keras-hub ViT, default (images/s) | ratio | "
        "keras-hub ViT, XLA (images/s) | ratio | parameters (ours / keras-hub) |",
        "|---|---|---|---|---|---|---|",
        *[f"| {name} | {a:.1f} | {b:.1f} | {a / b:.2f}x | {c:.1f} | {a / c:.2f}x | {p[0]:,} / {p[1]:,} |"
          for name, (a, b, c, p) in rows.items()],
        "",
        "Serving latency through the exported `serving_default` (PNG bytes in, decoded and resized in "
        "the graph), best of 20: " + ", ".join(
            f"{1000 * v:.2f} ms per image in requests of {k}" for k, v in latency.items()) + ".",
        "",
        "Fine-tuning on 300 digits of the held-out split (labels \"even\"/\"odd\", which the preset "
        "never had), scored on the other 700:",
        "",
        "| model | accuracy |",
        "|---|---|",
        *[f"| {name} | {value:.4f} |" for name, value in accuracy.items()],
        "",
        f"The shipped preset's own record is in `{metadata.relative_to(REPO)}`.",
    ])
    print(f"wrote {update_section('Image classifier', body)}")


if __name__ == "__main__":
    main()
