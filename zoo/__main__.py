"""`python -m zoo train|evaluate|predict|export ...`: the zoo's command line."""

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

MODELS = ("text-classifier",)


def _train(args):
    from zoo.text_classifier.train import train_text_classifier

    summary = train_text_classifier(
        args.data, args.out, preset=args.preset, epochs=args.epochs,
        batch_size=args.batch_size, strategy=args.strategy,
        text_column=args.text_column, label_column=args.label_column,
        learning_rate=args.learning_rate,
        max_train_examples=args.max_train_examples,
    )
    print(f"\n{summary['evaluated_on']} accuracy: {summary['accuracy']:.4f}")
    print(f"preset:  {Path(args.out) / 'preset'}")
    print(f"export:  {summary['export']}")
    print(f"figures: {Path(args.out) / 'training_curves.png'}, {Path(args.out) / 'attention.png'}")


def _load(directory):
    from zoo.text_classifier import TextClassifier

    folder = Path(directory)
    return TextClassifier.from_preset(folder / "preset" if (folder / "preset").is_dir() else folder)


def _evaluate(args):
    from zoo import report as reports
    from zoo.data import read_labelled_texts

    model = _load(args.model_dir)
    texts, labels = read_labelled_texts(args.data, args.text_column, args.label_column)
    predicted, _ = model.predict_labels(texts, batch_size=args.batch_size)
    summary = reports.classification_report(
        model.label_ids(labels), model.label_ids(predicted), model.display_labels()
    )
    print(reports.format_report(summary))


def _predict(args):
    model = _load(args.model_dir)
    names, probabilities = model.predict_labels(args.texts)
    for text, name, p in zip(args.texts, names, probabilities):
        print(f"{name}\t{p.max():.3f}\t{text}")


def _export(args):
    model = _load(args.model_dir)
    target = args.to or str(Path(args.model_dir) / "export")
    print(f"exported to {model.export(target)}")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m zoo", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train or fine-tune a model, report and export")
    train.add_argument("model", choices=MODELS)
    train.add_argument("--data", required=True,
                       help="CSV/TSV/JSONL file with text and label columns, or 'rotten-tomatoes'")
    train.add_argument("--out", required=True, help="output folder")
    train.add_argument("--preset", help="shipped preset name or preset folder to fine-tune")
    train.add_argument("--epochs", type=int, default=3)
    train.add_argument("--batch-size", type=int, default=32)
    train.add_argument("--learning-rate", type=float, default=1e-3)
    train.add_argument("--strategy", default="auto",
                       choices=("auto", "cpu", "mirrored", "multi_worker", "tpu"))
    train.add_argument("--text-column")
    train.add_argument("--label-column")
    train.add_argument("--max-train-examples", type=int)
    train.set_defaults(run=_train)

    evaluate = commands.add_parser("evaluate", help="report accuracy, P/R/F1 and confusion matrix")
    evaluate.add_argument("model_dir")
    evaluate.add_argument("--data", required=True)
    evaluate.add_argument("--batch-size", type=int, default=64)
    evaluate.add_argument("--text-column")
    evaluate.add_argument("--label-column")
    evaluate.set_defaults(run=_evaluate)

    predict = commands.add_parser("predict", help="print labels with probabilities")
    predict.add_argument("model_dir")
    predict.add_argument("texts", nargs="+")
    predict.set_defaults(run=_predict)

    export = commands.add_parser("export", help="export a TF Serving SavedModel")
    export.add_argument("model_dir")
    export.add_argument("--to", help="model folder (default: MODEL_DIR/export)")
    export.set_defaults(run=_export)

    args = parser.parse_args(argv)
    try:
        args.run(args)
    except (ValueError, TypeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
