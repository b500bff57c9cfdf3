"""`python -m zoo train|evaluate|predict|export ...`: the zoo's command line.

One registry, `MODELS`, says for each model its command-line name, its preset
kind, its class, its training job, the options that apply to it and how its
labelled evaluation data is read; `predict`, `evaluate` and `export` find the
model from the kind stored in the preset. A user error (bad data, unknown
preset, unreadable image) prints one line starting with `error:` and exits
with code 2.
"""

import argparse
import importlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _import(target):
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


def _labelled_texts(args):
    from zoo.text_classifier.train import EMBEDDED_DATA, load_training_data
    from zoo.data import read_labelled_texts

    if args.data == EMBEDDED_DATA:
        return load_training_data(EMBEDDED_DATA)[2]
    return read_labelled_texts(args.data, args.text_column, args.label_column)


def _labelled_images(args):
    from zoo.data import read_image_folder
    from zoo.datasets import load_digits
    from zoo.image_classifier.train import EMBEDDED_DATA

    if args.data == EMBEDDED_DATA:
        images, labels = load_digits()[1]
        return images, labels.astype(str)
    images, labels, _ = read_image_folder(args.data)
    return images, labels


def _sentence_pairs(args):
    from zoo.data import read_sentence_pairs
    from zoo.datasets import load_message_pairs, split_pairs
    from zoo.translator.train import embedded_language

    language = embedded_language(args.data)
    if language is not None:  # the embedded corpus: its fixed held-out split
        return split_pairs(load_message_pairs(language))[1]
    return read_sentence_pairs(args.data)


@dataclass(frozen=True)
class ModelEntry:
    kind: str            # the preset kind, stored in every preset's metadata
    model: str           # "module:Class"
    train: str           # "module:function(data, out, ...)"
    options: tuple       # train options that only this model takes
    labelled_data: object  # args -> (inputs, targets) for `evaluate`
    data_help: str
    evaluate_options: tuple = ()  # options of `evaluate` and `export` for this model

    @property
    def model_class(self):
        return _import(self.model)


MODELS = {
    "text-classifier": ModelEntry(
        "text_classifier", "zoo.text_classifier:TextClassifier",
        "zoo.text_classifier.train:train_text_classifier",
        ("text_column", "label_column"), _labelled_texts,
        "CSV/TSV/JSONL file with text and label columns, or 'rotten-tomatoes'",
    ),
    "image-classifier": ModelEntry(
        "image_classifier", "zoo.image_classifier:ImageClassifier",
        "zoo.image_classifier.train:train_image_classifier",
        ("image_size",), _labelled_images,
        "folder of class folders of PNG/JPEG/BMP/GIF images, or 'mnist'",
    ),
    "translator": ModelEntry(
        "translator", "zoo.translator:Translator",
        "zoo.translator.train:train_translator",
        ("beam_size",), _sentence_pairs,
        "TSV of source<TAB>target lines or JSONL with source/target fields, or "
        "'gramps' (English -> German) / 'gramps:LANG'",
        evaluate_options=("beam_size",),
    ),
}
COMMON_TRAIN_OPTIONS = ("preset", "epochs", "batch_size", "strategy", "learning_rate",
                        "max_train_examples")
MODEL_OPTIONS = sorted({option for entry in MODELS.values() for option in entry.options})
DECODING_OPTIONS = sorted({o for entry in MODELS.values() for o in entry.evaluate_options})


def _train(args):
    entry = MODELS[args.model]
    foreign = [o for o in MODEL_OPTIONS if o not in entry.options and getattr(args, o) is not None]
    if foreign:
        flags = ", ".join("--" + o.replace("_", "-") for o in foreign)
        raise ValueError(f"{flags} does not apply to {args.model}.")
    options = {o: getattr(args, o) for o in (*COMMON_TRAIN_OPTIONS, *entry.options)
               if getattr(args, o) is not None}
    summary = _import(entry.train)(args.data, args.out, **options)
    out = Path(args.out)
    headline = summary["headline"]
    print(f"\n{summary['evaluated_on']} {headline}: {summary[headline]:.4f}")
    print(f"preset:  {out / 'preset'}")
    print(f"export:  {summary['export']}")
    print(f"figures: {out / 'training_curves.png'}, {out / 'attention.png'}")


def entry_for(preset_folder):
    """The registry entry of the model a preset folder holds."""
    from zoo.presets import METADATA_FILE

    metadata = Path(preset_folder) / METADATA_FILE
    try:
        kind = json.loads(metadata.read_text()).get("kind")
    except (OSError, json.JSONDecodeError):
        raise ValueError(
            f"{preset_folder} holds no trained model: expected a training output "
            f"folder or a preset folder with {METADATA_FILE}."
        ) from None
    for entry in MODELS.values():
        if entry.kind == kind:
            return entry
    raise ValueError(f"{preset_folder} holds a {kind!r} model, which this zoo does not know.")


def _load(directory):
    folder = Path(directory)
    preset = folder / "preset" if (folder / "preset").is_dir() else folder
    entry = entry_for(preset)
    return entry, entry.model_class.from_preset(preset)


def _evaluate(args):
    entry, model = _load(args.model_dir)
    inputs, labels = entry.labelled_data(args)
    options = _options_for(entry, args, "evaluate")
    summary = model.evaluation_report(inputs, labels, batch_size=args.batch_size, **options)
    print(model.format_evaluation(summary))


def _predict(args):
    _, model = _load(args.model_dir)
    for line in model.prediction_lines(args.inputs):
        print(line)


def _options_for(entry, args, command):
    given = [o for o in DECODING_OPTIONS if getattr(args, o, None) is not None]
    foreign = [o for o in given if o not in entry.evaluate_options]
    if foreign:
        flags = ", ".join("--" + o.replace("_", "-") for o in foreign)
        raise ValueError(f"{flags} does not apply to `{command}` on a {entry.kind} model.")
    return {o: getattr(args, o) for o in given}


def _export(args):
    entry, model = _load(args.model_dir)
    target = args.to or str(Path(args.model_dir) / "export")
    print(f"exported to {model.export(target, **_options_for(entry, args, 'export'))}")


def _parser():
    parser = argparse.ArgumentParser(prog="python -m zoo", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train or fine-tune a model, report and export")
    train.add_argument("model", choices=sorted(MODELS))
    train.add_argument("--data", required=True, help="; ".join(
        f"{name}: {entry.data_help}" for name, entry in MODELS.items()))
    train.add_argument("--out", required=True, help="output folder")
    train.add_argument("--preset", help="shipped preset name or preset folder to fine-tune")
    train.add_argument("--epochs", type=int, help="default: the model's recipe")
    train.add_argument("--batch-size", type=int, help="default: the model's recipe")
    train.add_argument("--learning-rate", type=float, help="default: the model's recipe")
    train.add_argument("--strategy", default="auto",
                       choices=("auto", "cpu", "mirrored", "multi_worker", "tpu"))
    train.add_argument("--max-train-examples", type=int)
    train.add_argument("--text-column", help="text-classifier: the text column")
    train.add_argument("--label-column", help="text-classifier: the label column")
    train.add_argument("--image-size", type=int,
                       help="image-classifier: model input side (default: chosen from the images, "
                            "or the preset's)")
    train.add_argument("--beam-size", type=int,
                       help="translator: beam size of the report and the export (default 4)")
    train.set_defaults(run=_train)

    evaluate = commands.add_parser(
        "evaluate", help="report accuracy, P/R/F1 and confusion matrix (classifiers) or BLEU")
    evaluate.add_argument("model_dir")
    evaluate.add_argument("--data", required=True)
    evaluate.add_argument("--batch-size", type=int, default=64)
    evaluate.add_argument("--text-column")
    evaluate.add_argument("--label-column")
    evaluate.add_argument("--beam-size", type=int, help="translator: beam size (default 4)")
    evaluate.set_defaults(run=_evaluate)

    predict = commands.add_parser("predict", help="print labels with probabilities")
    predict.add_argument("model_dir")
    predict.add_argument("inputs", nargs="+", metavar="INPUT",
                         help="texts, or image files, as the model takes")
    predict.set_defaults(run=_predict)

    export = commands.add_parser("export", help="export a TF Serving SavedModel")
    export.add_argument("model_dir")
    export.add_argument("--to", help="model folder (default: MODEL_DIR/export)")
    export.add_argument("--beam-size", type=int, help="translator: beam size served (default 4)")
    export.set_defaults(run=_export)
    return parser


def _user_error(error):
    """The one-line message of an error caused by the user's input, else None."""
    tf = sys.modules.get("tensorflow")
    if tf is not None and isinstance(error, tf.errors.InvalidArgumentError):
        message = error.message
    elif isinstance(error, (ValueError, TypeError, FileNotFoundError)):
        message = str(error)
    else:
        return None
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    return " ".join(line for line in lines if not line.startswith("[[")) or type(error).__name__


def main(argv=None):
    args = _parser().parse_args(argv)
    try:
        args.run(args)
    except Exception as error:
        message = _user_error(error)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
