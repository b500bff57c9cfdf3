"""The text classifier's training job: data in, report, figures, preset and export out."""

from pathlib import Path

import keras
import numpy as np

from zoo.data import read_labelled_data
from zoo.datasets import load_definitions, load_sentiment
from zoo.lora import LORA_LEARNING_RATE
from zoo.text_classifier.text_classifier import TextClassifier
from zoo.training import (
    DEFAULT_PATIENCE, Job, announce_body, dropout_override, label_names, preset_label_order,
    split_validation, train_and_report, warmup_cosine,
)
from zoo.training_run import TrainingRun

EMBEDDED_DATA = "rotten-tomatoes"
# The topic task of the quality benchmark: WordNet noun definitions -> field.
DEFINITIONS_DATA = "wordnet-definitions"
# What `python -m zoo train text-classifier` fine-tunes unless told
# `--from-scratch` or `--preset NAME`: the MiniLM checkpoint read from its
# pip package (`zoo.text_transformer.bodies.PACKAGED_CHECKPOINTS`), or, when
# that package is not installed, the body pretrained by our own recipe.
CHECKPOINT_BODY = "all_minilm_l6_v2"
OWN_BODY = "english_body_small"
# Fine-tuning a pretrained body: a smaller peak learning rate, reached by a
# linear warm-up over the first 10% of the steps, then cosine decay. Our own
# small body (and presets made from it) takes larger steps for longer than
# a real checkpoint (BERT's fine-tuning range).
FINE_TUNING = dict(learning_rate=3e-4, epochs=4, warmup_fraction=0.1)
# A real checkpoint: one epoch when the data gives at least `min_steps`
# steps (MiniLM reaches 0.837 on the sentiment test split after one epoch of
# 289 steps), else as many epochs as reach them, at most `max_epochs`. On 100
# examples of the 25-topic task, 8 epochs (24 steps) scored 0.46 and 40
# epochs (120 steps) 0.55; on the other small sets the two were within 0.02
# (bench/RESULTS.md, "Text classifier: fine-tuning on small data").
CHECKPOINT_FINE_TUNING = dict(learning_rate=1e-4, min_steps=250, max_epochs=40,
                              warmup_fraction=0.1)
FROM_SCRATCH = dict(learning_rate=1e-3, epochs=3)


def default_body():
    """`(name, one line saying which body and why)` of the default body."""
    from zoo.text_transformer.bodies import PACKAGED_CHECKPOINTS, packaged_checkpoint_zip

    packaged = PACKAGED_CHECKPOINTS[CHECKPOINT_BODY]
    upstream, licence = packaged.upstream, packaged.licence
    package = packaged.distribution.split("==")[0]
    if packaged_checkpoint_zip(CHECKPOINT_BODY) is not None:
        return CHECKPOINT_BODY, (f"body: {CHECKPOINT_BODY} ({upstream}, {licence}), read from "
                                 f"the installed package {package}")
    return OWN_BODY, (f"body: {OWN_BODY}, since the package {package} that "
                      f"holds {upstream} is not installed")


def fine_tuning_recipe(preset):
    """`FINE_TUNING` for our own bodies and presets, `CHECKPOINT_FINE_TUNING`
    for converted checkpoints."""
    from zoo.sources import zoo_kind
    from zoo.text_transformer.bodies import ENCODER_KIND

    kind = zoo_kind(preset, TextClassifier.named_presets())
    return FINE_TUNING if kind in (ENCODER_KIND, TextClassifier.kind) else CHECKPOINT_FINE_TUNING


def recipe_epochs(recipe, examples, batch_size):
    """The epochs of a recipe: fixed, or enough for its `min_steps`."""
    if "epochs" in recipe:
        return recipe["epochs"]
    steps_per_epoch = -(-examples // batch_size)
    return min(recipe["max_epochs"], max(1, -(-recipe["min_steps"] // steps_per_epoch)))


def fine_tuning_schedule(examples, batch_size, epochs=None, learning_rate=None, recipe=None):
    """The fine-tuning learning-rate schedule of `recipe` (default
    `FINE_TUNING`) for `epochs` passes over `examples` training examples in
    batches of `batch_size` (epochs and peak learning rate default to the
    recipe's)."""
    recipe = recipe or FINE_TUNING
    steps = -(-examples // batch_size) * (epochs or recipe_epochs(recipe, examples, batch_size))
    return warmup_cosine(learning_rate or recipe["learning_rate"], steps,
                         recipe["warmup_fraction"])

# The from-scratch architecture of `make demo` and the shipped preset.
DEMO_ARCHITECTURE = dict(
    vocabulary_size=8000, sequence_length=64, hidden_dim=128, num_layers=2,
    num_heads=4, intermediate_dim=256, dropout=0.2,
)


def load_training_data(data, text_column=None, label_column=None,
                       validation_fraction=0.1, seed=0, allow_skipped=False,
                       validation_data=None):
    """`(train, validation, test, counts)`, each split `(texts, labels)`;
    test may be None, and so are the counts (`zoo.data.ReadCounts`) of
    embedded data.

    `data` is a CSV/TSV/JSONL file (`zoo.data.read_labelled_data`, which
    refuses a file with more than 1% of its rows skipped unless
    `allow_skipped`), `"rotten-tomatoes"` for the embedded sentiment data or
    `"wordnet-definitions"` for the embedded topic task, each with its fixed
    held-out test split. `validation_data`, a file of the same kind (the same
    columns), replaces the validation split.
    """
    counts = None
    if data == EMBEDDED_DATA:
        (texts, labels), test = load_sentiment()
        names = ("rotten", "fresh")
        labels = np.array([names[i] for i in labels])
        test = (test[0], np.array([names[i] for i in test[1]]))
    elif data == DEFINITIONS_DATA:
        (texts, labels), test = load_definitions()
    else:
        texts, labels, counts = read_labelled_data(data, text_column, label_column,
                                                   allow_skipped=allow_skipped)
        texts, labels, test = np.array(texts, dtype=object), np.array(labels), None
    validation = None
    if validation_data is not None:
        held = read_labelled_data(validation_data, text_column, label_column,
                                  allow_skipped=allow_skipped)
        validation = (np.array(held[0], dtype=object), np.array(held[1]))
    train, validation = split_validation(texts, labels, data, validation_fraction, seed,
                                         validation)
    return train, validation, test, counts


def train_text_classifier(data, out, preset=None, from_scratch=False, epochs=None,
                          batch_size=32, run=None, text_column=None, label_column=None,
                          learning_rate=None, max_train_examples=None, architecture=None,
                          dropout=None, sequence_length=None, attention=None, window_size=None,
                          global_tokens=None, rematerialize=None, allow_skipped=False,
                          validation_data=None, patience=DEFAULT_PATIENCE, lora_rank=None,
                          verbose="auto", seed=0):
    """Fine-tunes a pretrained body or preset, or trains from scratch; then
    reports, plots, saves and exports.

    Which network: `preset` (a classifier preset, a text body, a keras-hub
    preset or a Hugging Face checkpoint) when given; else from scratch with
    `DEMO_ARCHITECTURE`, with the sizes in `architecture` instead of its own,
    when `from_scratch` or `architecture` is given; else `default_body()`.
    Epochs and learning rate default to `fine_tuning_recipe(preset)` for a
    pretrained network (with warm-up and cosine decay) and to `FROM_SCRATCH`
    otherwise.
    `sequence_length`, `attention`, `window_size`, `global_tokens` and
    `rematerialize` change the network's (a longer sequence than a preset's
    extends its position embeddings). `lora_rank` trains LoRA adapters of
    that rank and the head instead of every weight (`zoo.lora`; peak
    learning rate `LORA_LEARNING_RATE`); the preset and the export get them
    merged.

    A data file with more than 1% of its rows skipped (empty text, no label)
    is refused unless `allow_skipped`; what was read, used, skipped and cut
    is printed and kept in `report.json` (`"data_rows"`).

    Writes under `out/` what `zoo.training.train_and_report` lists.

    Returns:
        A `zoo.training.TrainingResult` (its `report` is `report.json`'s).
    """
    if from_scratch and preset is not None:
        raise ValueError(f"Give either a preset to fine-tune or from_scratch=True, not both. "
                         f"Received: preset={preset!r}, from_scratch=True.")
    if lora_rank is not None and (from_scratch or architecture):
        raise ValueError("--lora-rank trains adapters on a pretrained body; it does not apply "
                         "to training from scratch.")
    announced = preset is None and not (from_scratch or architecture)
    if announced:
        preset, line = default_body()
        print(line, flush=True)
    recipe = fine_tuning_recipe(preset) if preset is not None else FROM_SCRATCH
    if lora_rank is not None:
        recipe = {**recipe, "learning_rate": LORA_LEARNING_RATE}
    learning_rate = learning_rate or recipe["learning_rate"]
    keras.utils.set_random_seed(seed)
    train, validation, test, counts = load_training_data(data, text_column, label_column,
                                                         seed=seed, allow_skipped=allow_skipped,
                                                         validation_data=validation_data)
    if counts is not None:
        print(counts.summary(), flush=True)
    if preset is not None and not announced:
        announce_body(TextClassifier, preset)
    data_rows = {"data_rows": counts.as_dict()} if counts else {}
    if max_train_examples:
        train = (train[0][:max_train_examples], train[1][:max_train_examples])
    epochs = epochs or recipe_epochs(recipe, len(train[0]), batch_size)
    names = label_names(train, validation)
    shape = {k: v for k, v in (("sequence_length", sequence_length), ("attention", attention),
                               ("window_size", window_size), ("global_tokens", global_tokens),
                               ("rematerialize", rematerialize))
             if v is not None}

    run = run or TrainingRun()
    with run.scope():
        if preset is not None:
            labels = preset_label_order(TextClassifier, preset, names)
            model = TextClassifier.from_preset(preset, labels=labels, lora_rank=lora_rank,
                                               **shape, **dropout_override(dropout))
            schedule = fine_tuning_schedule(len(train[0]), batch_size, epochs, learning_rate, recipe)
        else:
            model = TextClassifier(labels=names, **{**DEMO_ARCHITECTURE, **(architecture or {}),
                                                     **shape, **dropout_override(dropout)})
            schedule = learning_rate
        run.prepare(model)
        model.compile(optimizer=keras.optimizers.AdamW(schedule, weight_decay=0.01),
                      **run.compile_options())
        if preset is None:
            model.adapt(train[0])

    return train_and_report(model, Job(
        train=train, validation=validation, test=test, out=Path(out), epochs=epochs,
        batch_size=batch_size, seed=seed, verbose=verbose, patience=patience,
        metadata={"data": str(data), "learning_rate": learning_rate, "seed": seed,
                  "lora": getattr(model, "lora", None),
                  # `evaluate RUN --data ...` reads the same columns.
                  "text_column": text_column, "label_column": label_column, **data_rows},
        report_extra={"preset": None if preset is None else str(preset),
                      "lora": getattr(model, "lora", None), **data_rows},
    ), run)


# `python -m zoo tune text-classifier`: the sizes, dropout and learning rate
# searched (zoo.tuning), and the validation metric that picks the best.
TUNING_OBJECTIVE = ("val_accuracy", "max")


def search_space(hp):
    """KerasTuner hyperparameters -> `train_text_classifier` arguments."""
    hidden_dim = hp.Choice("hidden_dim", [64, 128, 192])
    return {
        "architecture": {
            "hidden_dim": hidden_dim,
            "num_layers": hp.Int("num_layers", 1, 3),
            "num_heads": hp.Choice("num_heads", [2, 4]),
            "intermediate_dim": 2 * hidden_dim,
        },
        "dropout": hp.Float("dropout", 0.0, 0.3, step=0.1),
        "learning_rate": hp.Float("learning_rate", 3e-4, 3e-3, sampling="log"),
    }
