"""`python -m zoo train|tune|evaluate|predict|export|convert ...`: the zoo's command line.

One registry, `MODELS`, says for each model its command-line name, its preset
kind, its class, its training job, the options that apply to it and how its
labelled evaluation data is read; `predict`, `evaluate` and `export` find the
model from the kind stored in the preset. A user error (bad data, unknown
preset, unreadable image) prints one line starting with `error:` and exits
with code 2.
"""

import argparse
import contextlib
import gc
import importlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from zoo.tensorflow_logs import without_tensorflow_logs

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _import(target):
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


def _labelled_texts(args):
    from zoo.text_classifier.train import DEFINITIONS_DATA, EMBEDDED_DATA, load_training_data
    from zoo.data import read_labelled_texts

    if args.data in (EMBEDDED_DATA, DEFINITIONS_DATA):
        return load_training_data(args.data)[2]
    return read_labelled_texts(args.data, args.text_column, args.label_column,
                               allow_skipped=args.allow_skipped)


def _labelled_images(args):
    from zoo.image_classifier.image_folder import read_image_folder
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
    architecture: str    # "module:NAME" of the from-scratch network's sizes
    evaluate_options: tuple = ()  # options of `evaluate` and `export` for this model

    @property
    def model_class(self):
        return _import(self.model)


MODELS = {
    "text-classifier": ModelEntry(
        "text_classifier", "zoo.text_classifier:TextClassifier",
        "zoo.text_classifier.train:train_text_classifier",
        ("text_column", "label_column", "from_scratch", "sequence_length", "attention",
         "window_size", "global_tokens", "rematerialize", "allow_skipped", "lora_rank"),
        _labelled_texts,
        "CSV/TSV/JSONL file with text and label columns, or 'rotten-tomatoes' (sentiment) or "
        "'wordnet-definitions' (topic)",
        "zoo.text_classifier.train:DEMO_ARCHITECTURE",
    ),
    "image-classifier": ModelEntry(
        "image_classifier", "zoo.image_classifier:ImageClassifier",
        "zoo.image_classifier.train:train_image_classifier",
        ("image_size", "attention_matrices", "lora_rank"), _labelled_images,
        "folder of class folders of PNG/JPEG/BMP/GIF images, or 'mnist'",
        "zoo.image_classifier.train:SCRATCH_ARCHITECTURE",
    ),
    "translator": ModelEntry(
        "translator", "zoo.translator:Translator",
        "zoo.translator.train:train_translator",
        ("beam_size",), _sentence_pairs,
        "TSV of source<TAB>target lines or JSONL with source/target fields, or "
        "'gramps' (English -> German) / 'gramps:LANG'",
        "zoo.translator.train:DEFAULT_ARCHITECTURE",
        evaluate_options=("beam_size",),
    ),
}
COMMON_TRAIN_OPTIONS = ("preset", "epochs", "batch_size", "learning_rate", "max_train_examples",
                        "dropout", "validation_data", "patience", "architecture")
MODEL_OPTIONS = sorted({option for entry in MODELS.values() for option in entry.options})
TUNE_MODEL_OPTIONS = ("text_column", "label_column")
DECODING_OPTIONS = sorted({o for entry in MODELS.values() for o in entry.evaluate_options})


def _train(args):
    from zoo.presets import pinned

    entry = MODELS[args.model]
    _check_output_folder(args.out, "--out")
    pin = contextlib.nullcontext()
    if args.preset_sha256 is not None:
        if args.preset is None:
            raise ValueError("--preset-sha256 pins the --preset folder; give --preset too.")
        model_class = entry.model_class
        pin = pinned(args.preset, args.preset_sha256, model_class.named_presets())
    foreign = [o for o in MODEL_OPTIONS if o not in entry.options and getattr(args, o) is not None]
    if foreign:
        flags = ", ".join("--" + o.replace("_", "-") for o in foreign)
        raise ValueError(f"{flags} does not apply to {args.model}.")
    if args.architecture is not None:
        _check_architecture(args, entry)
    options = {o: getattr(args, o) for o in (*COMMON_TRAIN_OPTIONS, *entry.options)
               if getattr(args, o) is not None}
    with pin:  # the preset's metadata checked as it is loaded, not only here
        result = _import(entry.train)(args.data, args.out, run=_training_run(args), **options)
    out = Path(args.out)
    print(f"\n{result.score}")
    if result.preset is None:
        print(f"outputs: written by the chief worker into its {out}")
        return
    print(f"preset:  {result.preset}")
    print(f"export:  {result.export}")
    print(f"figures: {', '.join(str(figure) for figure in sorted(out.glob('*.png')))}")


def _check_architecture(args, entry):
    from zoo.presets import check_sizes

    if args.preset is not None:
        raise ValueError("--architecture sizes a network trained from scratch; a --preset "
                         "keeps its own sizes.")
    sizes = sorted(key for key, value in _import(entry.architecture).items()
                   if isinstance(value, int) and not isinstance(value, bool))
    unknown = sorted(set(args.architecture) - set(sizes))
    if unknown:
        raise ValueError(f"--architecture: {args.model} has no size {', '.join(unknown)}. "
                         f"It has: {', '.join(sizes)}.")
    # The bound an edited preset's config gets: a size no machine could build.
    check_sizes(args.architecture, "--architecture", "a network's")


def _tune(args):
    from zoo.tuning import format_table, tune

    entry = MODELS[args.model]
    options = {o: getattr(args, o) for o in entry.options
               if o in TUNE_MODEL_OPTIONS and getattr(args, o, None) is not None}
    rows = tune(entry.train, args.data, args.out, args.trials, epochs=args.epochs,
                max_train_examples=args.max_train_examples, run=_training_run(args), **options)
    out = Path(args.out)
    print("\n" + format_table(rows))
    print(f"\ntable:   {out / 'trials.csv'}")
    print(f"best:    {out / 'preset'} (trial {rows[0]['trial']}; {out / 'best.json'})")


def _training_run(args):
    from zoo.training_run import TrainingRun

    profile = None
    if getattr(args, "profile_steps", None):
        try:
            profile = tuple(int(step) for step in args.profile_steps.split(","))
        except ValueError:
            raise ValueError("--profile-steps takes two step numbers, e.g. 10,12. "
                             f"Received: {args.profile_steps!r}.") from None
    minutes = getattr(args, "checkpoint_minutes", None)  # None: TrainingRun's default
    return TrainingRun(
        strategy=args.strategy, precision=args.precision, jit_compile=args.jit_compile,
        checkpoint_every=getattr(args, "checkpoint_every", None),
        tensorboard=getattr(args, "tensorboard", None), profile_steps=profile,
        attention_statistics=getattr(args, "attention_statistics", False),
        restart=bool(getattr(args, "restart", False)),
        **({} if minutes is None else {"checkpoint_minutes": minutes}),
    )


def entry_for(preset_folder):
    """The registry entry of the model a preset folder holds."""
    from zoo.presets import METADATA_FILE
    from zoo.sources import zoo_kind

    kind = zoo_kind(preset_folder)
    if kind is None:
        raise ValueError(
            f"{preset_folder} holds no trained model: expected a training output "
            f"folder or a preset folder with {METADATA_FILE}."
        )
    for entry in MODELS.values():
        if entry.kind == kind:
            return entry
    raise ValueError(f"{preset_folder} holds a {kind!r} model, which this zoo does not know.")


def _load(directory):
    from zoo.publishing import recover_replaced

    folder = Path(directory)
    if not folder.exists():
        raise ValueError(f"{folder} does not exist; expected a training output folder or a "
                         "preset folder.")
    recover_replaced(folder / "preset")  # a replacement cut short by a crash
    preset = folder / "preset" if (folder / "preset").is_dir() else folder
    entry = entry_for(preset)
    return entry, entry.model_class.from_preset(preset)


def _trained_with(directory):
    """The `training` entry of the metadata of the model in `directory`
    (what `train` recorded; empty for a preset that has none)."""
    from zoo.guarded_files import read_json
    from zoo.presets import METADATA_FILE

    folder = Path(directory)
    preset = folder / "preset" if (folder / "preset").is_dir() else folder
    try:
        training = (read_json(preset, METADATA_FILE) or {}).get("training")
    except ValueError:
        return {}
    return training if isinstance(training, dict) else {}


def _evaluate(args):
    entry, model = _load(args.model_dir)
    trained_with = _trained_with(args.model_dir)
    for column in ("text_column", "label_column"):  # the run's, unless given again
        if getattr(args, column, None) is None:
            setattr(args, column, trained_with.get(column))
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
    target = args.to or str(Path(args.model_dir) / "export")
    _check_output_folder(target, "--to")
    entry, model = _load(args.model_dir)
    print(f"exported to {model.export(target, **_options_for(entry, args, 'export'))}")


def _check_output_folder(path, flag):
    """Refuses, before any model is loaded, an output folder that is a file."""
    if Path(path).exists() and not Path(path).is_dir():
        raise ValueError(f"{flag} {path} is a file; expected a folder to write into.")


def _convert(args):
    """One door: the handle's source picks its body loader (text or image);
    the body is written as a checksummed zoo body preset."""
    from functools import partial

    from zoo.image_classifier import image_classifier as images
    from zoo.sources import load
    from zoo.text_classifier import TextClassifier
    from zoo.text_transformer import bodies

    _check_output_folder(args.to, "--to")

    def converted(family, load_body, source):
        return (family, *load_body(source))

    loaders = {key: partial(converted, "text", load_body)
               for key, load_body in bodies.body_loaders().items()}
    loaders.update({key: partial(converted, "image", load_body)
                    for key, load_body in images.body_loaders().items()})
    family, backbone, preprocessor = load(args.handle, loaders, TextClassifier.named_presets(),
                                          "python -m zoo convert")
    metadata = {"source": str(args.handle)}
    if family == "image":
        folder = images.save_backbone_preset(args.to, backbone, preprocessor, metadata=metadata)
        size = "x".join(map(str, backbone.image_size))
        print(f"converted {args.handle}: ViT, {backbone.num_layers} blocks of width "
              f"{backbone.hidden_dim}, {backbone.count_params():,} parameters, {size} images")
        print(f"preset:  {folder} (train image-classifier --preset {folder})")
        return
    folder = bodies.save_backbone_preset(args.to, backbone, preprocessor, metadata=metadata)
    print(f"converted {args.handle}: {backbone.num_layers} blocks of width {backbone.hidden_dim}, "
          f"{backbone.count_params():,} parameters, {len(preprocessor.vocabulary):,} tokens")
    print(f"preset:  {folder} (train text-classifier --preset {folder})")


def whole_number(minimum):
    """An argparse type: a whole number of at least `minimum`."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(
                f"expected a whole number of at least {minimum}; received {text!r}")
        return value

    return parse


def number_between(low, high, low_included=False, high_included=False):
    """An argparse type: a finite number between `low` and `high`."""
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        above = value >= low if low_included else value > low
        below = value <= high if high_included else value < high
        if not (above and below):
            raise argparse.ArgumentTypeError(
                f"expected a number in {'[' if low_included else '('}{low:g}, {high:g}"
                f"{']' if high_included else ')'}; received {text!r}")
        return value

    return parse


POSITIVE = whole_number(1)


def sizes(text):
    """An argparse type: `KEY=VALUE[,KEY=VALUE...]` of positive whole numbers."""
    parsed = {}
    for pair in text.split(","):
        key, _, value = (part.strip() for part in pair.partition("="))
        if not (key and value.isascii() and value.isdigit() and int(value) > 0):
            raise argparse.ArgumentTypeError(
                f"expected KEY=VALUE pairs of positive whole numbers, separated by commas "
                f"(num_layers=2,hidden_dim=64); received {pair!r}")
        parsed[key] = int(value)
    return parsed


def _parser():
    parser = argparse.ArgumentParser(prog="python -m zoo", description=__doc__.splitlines()[0],
                                     allow_abbrev=False)
    commands = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    common.add_argument("--verbose", action="store_true",
                        help="show TensorFlow's start-up and C++ log lines (hidden by default)")

    def command(name, **kwargs):
        # No abbreviated flags (`--epoch 1` is an error, not `--epochs 1`),
        # and the command's own usage on an unknown flag (see `main`).
        sub = commands.add_parser(name, allow_abbrev=False, parents=[common],
                                  description=kwargs.get("help"), **kwargs)
        sub.set_defaults(parser=sub)
        return sub

    train = command("train", help="train or fine-tune a model, report and export")
    train.add_argument("model", choices=sorted(MODELS))
    train.add_argument("--data", required=True, help="; ".join(
        f"{name}: {entry.data_help}" for name, entry in MODELS.items()))
    train.add_argument("--out", required=True, help="output folder")
    train.add_argument("--preset", help="shipped preset name or preset folder to fine-tune; "
                       "text-classifier also takes a keras-hub preset or a Hugging Face BERT, "
                       "DistilBERT or RoBERTa checkpoint (folder, kaggle:// or hf://), by "
                       "default the MiniLM checkpoint all_minilm_l6_v2 (else the shipped body "
                       "english_body_small); image-classifier a keras-hub or Hugging Face ViT "
                       "checkpoint")
    train.add_argument("--preset-sha256", metavar="SHA256",
                       help="refuse the --preset folder unless its metadata.json has this "
                            "SHA-256 (which pins every file it lists)")
    train.add_argument("--from-scratch", action="store_true", default=None,
                       help="text-classifier: train a new network instead of fine-tuning the "
                            "pretrained body")
    train.add_argument("--epochs", type=POSITIVE, help="default: the model's recipe")
    train.add_argument("--batch-size", type=POSITIVE, help="default: the model's recipe")
    train.add_argument("--learning-rate", type=number_between(0, 1, high_included=True),
                       help="default: the model's recipe")
    train.add_argument("--patience", type=whole_number(0), metavar="EPOCHS",
                       help="stop once validation accuracy has not improved for this many "
                            "epochs and keep the best epoch's weights (default 5; 0: train "
                            "every epoch)")
    train.add_argument("--lora-rank", type=POSITIVE, metavar="RANK",
                       help="text-classifier, image-classifier: fine-tune LoRA adapters of this "
                            "rank on the body's attention and feed-forward projections and the "
                            "head, the rest frozen (checkpoints of megabytes; the preset and the "
                            "export get the adapters merged)")
    train.add_argument("--validation-data", metavar="DATA",
                       help="validate on this file or folder (of the same kind as --data) "
                            "instead of a split of --data")
    _add_run_options(train)
    train.add_argument("--checkpoint-every", type=POSITIVE, metavar="STEPS",
                       help="back up the training state every STEPS steps as well; an "
                            "interrupted run resumes from the last backup")
    train.add_argument("--checkpoint-minutes", type=number_between(0, 1e9, low_included=True),
                       metavar="MINUTES",
                       help="back up the training state at an epoch's end once MINUTES have "
                            "passed since the last backup (default 5; 0: every epoch), and "
                            "when training ends; at most two backups are kept")
    train.add_argument("--tensorboard", metavar="DIR",
                       help="TensorBoard logs: losses, attention statistics and maps, profiles")
    train.add_argument("--profile-steps", metavar="FIRST,LAST",
                       help="profile these steps with the TensorFlow profiler (needs --tensorboard)")
    train.add_argument("--no-attention-stats", dest="attention_statistics", action="store_false",
                       help="do not log attention entropy and collapsed heads each epoch")
    train.add_argument("--max-train-examples", type=POSITIVE,
                       help="train on at most this many examples (the first, after the "
                            "validation split)")
    train.add_argument("--restart", action="store_true",
                       help="discard the checkpoint in --out and start over (a run resumes only "
                            "from a checkpoint of the same data and settings)")
    train.add_argument("--dropout", type=number_between(0, 1, low_included=True), help="default: the model's recipe or preset")
    train.add_argument("--architecture", type=sizes, metavar="KEY=VALUE,...",
                       help="from scratch: these sizes instead of the recipe's, e.g. "
                            "num_layers=2,hidden_dim=64 (text-classifier: implies "
                            "--from-scratch); an unknown key's error lists the model's")
    train.add_argument("--text-column", help="text-classifier: the text column")
    train.add_argument("--label-column", help="text-classifier: the label column")
    train.add_argument("--allow-skipped", action="store_const", const=True,
                       help="text-classifier: train even when more than 1%% of the rows have an "
                            "empty text or no label (they are skipped and counted)")
    train.add_argument("--sequence-length", type=POSITIVE,
                       help="text-classifier: tokens per text (longer than the preset's extends "
                            "its position embeddings)")
    train.add_argument("--attention", choices=("multi_head", "local_window"),
                       help="text-classifier: attention of the blocks (local_window for long texts)")
    train.add_argument("--window-size", type=POSITIVE,
                       help="text-classifier: band half-width of local_window attention")
    train.add_argument("--global-tokens", type=whole_number(0),
                       help="text-classifier: leading tokens ([CLS]) with global attention under "
                            "local_window, as Longformer's")
    train.add_argument("--rematerialize", action="store_const", const=True,
                       help="text-classifier: recompute each block's activations in the backward "
                            "pass (about half the memory of long-document training, about 22%% "
                            "more time)")
    train.add_argument("--image-size", type=POSITIVE,
                       help="image-classifier: model input side (default: chosen from the images, "
                            "or the preset's)")
    train.add_argument("--attention-matrices", action="store_const", const=True,
                       help="image-classifier: also draw every head's patch-to-patch attention "
                            "weights on one validation image (attention_matrices.png)")
    train.add_argument("--beam-size", type=POSITIVE,
                       help="translator: beam size of the report and the export (default 4)")
    train.set_defaults(run=_train)

    tune = command(
        "tune", help="search sizes, dropout and learning rate with KerasTuner; keep the best")
    tune.add_argument("model", choices=sorted(MODELS))
    tune.add_argument("--data", required=True, help="as for `train`")
    tune.add_argument("--out", required=True, help="output folder (a rerun goes on)")
    tune.add_argument("--trials", type=POSITIVE, required=True, help="configurations to try")
    tune.add_argument("--epochs", type=POSITIVE, help="per trial (default: the model's recipe)")
    tune.add_argument("--max-train-examples", type=POSITIVE)
    tune.add_argument("--text-column")
    tune.add_argument("--label-column")
    _add_run_options(tune)
    tune.set_defaults(run=_tune)

    evaluate = command(
        "evaluate", help="report accuracy, P/R/F1 and confusion matrix (classifiers) or BLEU")
    evaluate.add_argument("model_dir")
    evaluate.add_argument("--data", required=True)
    evaluate.add_argument("--batch-size", type=POSITIVE, default=64)
    evaluate.add_argument("--text-column",
                          help="text-classifier: default: the column the run was trained on")
    evaluate.add_argument("--label-column",
                          help="text-classifier: default: the column the run was trained on")
    evaluate.add_argument("--allow-skipped", action="store_true",
                          help="text-classifier: evaluate even when more than 1%% of the rows "
                               "have an empty text or no label")
    evaluate.add_argument("--beam-size", type=POSITIVE, help="translator: beam size (default 4)")
    evaluate.set_defaults(run=_evaluate)

    predict = command("predict", help="print each input's prediction: a label with its "
                      "probability (classifiers) or a translation")
    predict.add_argument("model_dir")
    predict.add_argument("inputs", nargs="+", metavar="INPUT",
                         help="texts, or image files, as the model takes")
    predict.set_defaults(run=_predict)

    export = command("export", help="export a TF Serving SavedModel")
    export.add_argument("model_dir")
    export.add_argument("--to", help="model folder (default: MODEL_DIR/export)")
    export.add_argument("--beam-size", type=POSITIVE, help="translator: beam size served (default 4)")
    export.set_defaults(run=_export)

    convert = command(
        "convert", help="convert a BERT, DistilBERT, RoBERTa or ViT checkpoint into a checksummed zoo "
        "preset")
    convert.add_argument("handle", help="keras-hub preset or Hugging Face checkpoint: a folder, "
                         "kaggle://... or hf://..., or all_minilm_l6_v2 (the installed package)")
    convert.add_argument("--to", required=True, help="preset folder to write")
    convert.set_defaults(run=_convert)
    return parser


def _add_run_options(parser):
    parser.add_argument("--strategy", default="auto",
                        help="auto (TPU, else a TF_CONFIG cluster, else several GPUs, else one "
                             "device), cpu, mirrored, multi_worker or tpu")
    parser.add_argument("--precision", default="float32",
                        choices=("float32", "mixed_float16", "mixed_bfloat16"))
    parser.add_argument("--jit-compile", default="auto", choices=("auto", "true", "false"),
                        help="XLA for the train step (auto: the model's choice for the device)")


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


def _interrupted(args):
    """The line for Ctrl-C: where a training run stopped and how it resumes."""
    out = getattr(args, "out", None)
    if args.run is not _train or out is None:
        return "interrupted."
    backup = Path(out) / "backup"
    steps = sorted(backup.rglob("step-*")) if backup.is_dir() else []
    if not steps:
        return f"interrupted before the first checkpoint; nothing in {out} to resume from."
    return (f"interrupted; the last checkpoint is {steps[-1]} (step "
            f"{int(steps[-1].name.split('-')[1])}): run the same command again to resume from "
            "it, or add --restart to start over.")


def main(argv=None, quiet_tensorflow=False):
    """Runs one command; returns the exit code. `quiet_tensorflow` (as
    `python -m zoo` runs it) hides TensorFlow's C++ log lines unless
    `--verbose` is given."""
    parser = _parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # the command's usage, not the top level's
        args.parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    quiet = quiet_tensorflow and not args.verbose
    with without_tensorflow_logs() if quiet else contextlib.nullcontext():
        try:
            args.run(args)
        except KeyboardInterrupt:
            print(f"error: {_interrupted(args)}", file=sys.stderr)
            return 2
        except Exception as error:
            message = _user_error(error)
            if message is None:
                raise
            print(f"error: {message}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    # Python's cyclic garbage collector, run less often: tracing a model
    # allocates objects by the million, and a short run spent 5-15% of its
    # time collecting (the translator's two-epoch command: 24.0-26.9 s with
    # the default thresholds, 21.5-22.7 s with these).
    gc.set_threshold(10_000, 10, 10)
    sys.exit(main(quiet_tensorflow=True))
