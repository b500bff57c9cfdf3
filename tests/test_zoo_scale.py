"""Training at scale: strategies, several workers, precision, XLA flags,
resuming a killed run, attention statistics."""

import csv
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import (
    TINY_ARCHITECTURE, TINY_SIZES, TINY_TRANSLATOR, TINY_VIT, environment, interrupt_at,
    number_pairs, run_main, write_reviews_csv,
)
from zoo import report
from zoo.distribute import describe, get_strategy, local_cluster
from zoo.training_run import TrainingRun


def zoo_command(*args):
    return [sys.executable, "-m", "zoo", *args]


@pytest.fixture(scope="module")
def reviews_csv(sentiment_sample, tmp_path_factory):
    """192 labelled reviews: 173 to train on after the 10% validation split."""
    return write_reviews_csv(tmp_path_factory.mktemp("scale"), sentiment_sample, 192)


# Strategies.

def test_strategy_names_fail_fast_with_reasons(monkeypatch):
    with pytest.raises(ValueError, match="ParameterServerStrategy is not supported.*multi_worker"):
        get_strategy("parameter_server")
    with pytest.raises(ValueError, match="Unknown strategy 'gpus'"):
        get_strategy("gpus")
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="needs TF_CONFIG"):
        get_strategy("multi_worker")
    with pytest.raises(ValueError, match="no TPU found"):
        get_strategy("tpu")
    with pytest.raises(ValueError, match="Unknown precision"):
        TrainingRun(precision="float8")
    with pytest.raises(ValueError, match="profile_steps"):
        TrainingRun(profile_steps=(5, 2))


def test_auto_picks_one_device_here_and_says_so(mirrored_strategy):
    # No TPU, no TF_CONFIG and no GPU: the default strategy.
    assert describe(get_strategy("auto")) == "default strategy (one device), 1 replica"
    assert describe(mirrored_strategy) == "MirroredStrategy, 2 replicas"


def tiny_model(kind, strategy):
    """A dropout-free tiny model of `kind` with its training data, built and
    compiled under `strategy` with the same seed every time."""
    from zoo import ImageClassifier, TextClassifier, Translator
    from zoo.datasets import load_digits, load_sentiment

    keras.utils.set_random_seed(0)
    with strategy.scope():
        if kind == "text":
            (texts, labels), _ = load_sentiment()
            data = (texts[:128], labels[:128])
            model = TextClassifier(num_classes=2, **TINY_ARCHITECTURE)
            model.adapt(data[0])
        elif kind == "image":
            (images, labels), _ = load_digits()
            data = (images[:128], labels[:128])
            model = ImageClassifier(num_classes=10, **TINY_VIT, augmentation=None)
        else:
            data = number_pairs(128, seed=0)
            model = Translator(**TINY_TRANSLATOR)
            model.adapt(*data)
        model.compile(optimizer=keras.optimizers.AdamW(1e-3), jit_compile=False)
    return model, data


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["text", "image", "translator"])
def test_mirrored_over_two_devices_gives_the_weights_of_one(kind, mirrored_strategy):
    """Same global batch and seed: two replicas end with one device's
    weights, within float tolerance (the gradient sums differ in order)."""
    weights = []
    for strategy in (tf.distribute.get_strategy(), mirrored_strategy):
        model, (x, y) = tiny_model(kind, strategy)
        initial = model.get_weights()
        model.fit(x, y, batch_size=32, epochs=2, verbose=0, seed=3)
        weights.append(model.get_weights())
        assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 8
    changed = 0
    for one, two, start in zip(*weights, initial):
        # Adam divides by the root of the squared gradients, so a weight
        # whose gradient is near zero turns summation-order differences
        # (~1e-7) into up to 1e-4 after 8 steps at 1e-3; nothing else moves.
        np.testing.assert_allclose(one, two, rtol=1e-3, atol=1e-4)
        changed += not np.allclose(one, start)
    assert changed > len(weights[0]) // 2  # training moved them


# Precision and compilation.

def _dtypes(signature):
    """A served signature's (input, output) dtypes by name."""
    return ({k: v.dtype for k, v in signature.structured_input_signature[1].items()},
            {k: v.dtype for k, v in signature.structured_outputs.items()})


def _serving_default(model, folder):
    """The export's `serving_default` and its dtypes."""
    serving = tf.saved_model.load(str(model.export(folder))).signatures["serving_default"]
    return serving, _dtypes(serving)


@pytest.fixture(scope="module")
def float32_text_serving(tiny_classifier, tmp_path_factory):
    """The float32 text export, once for both mixed policies."""
    return _serving_default(tiny_classifier, tmp_path_factory.mktemp("float32"))


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_trains_and_exports_float32_dtypes(precision, float32_text_serving,
                                                           tmp_path):
    from zoo import TextClassifier

    (texts, labels) = (np.array(["a fine and moving film", "dull and far too long"] * 48),
                       np.array(["fresh", "rotten"] * 48))
    run = TrainingRun(precision=precision, jit_compile="false")
    keras.utils.set_random_seed(0)
    with run.scope():
        model = TextClassifier(labels=["fresh", "rotten"], **TINY_ARCHITECTURE)
        model.adapt(texts)
        model.compile(optimizer=keras.optimizers.AdamW(3e-3), **run.compile_options())
    assert keras.config.dtype_policy().name == "float32"  # restored after building
    assert model.backbone.blocks[0].dtype_policy.name == precision
    assert model.backbone.blocks[0].compute_dtype == precision.split("_")[1]
    if precision == "mixed_float16":  # dynamic loss scaling, as Keras does
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    losses = model.fit(texts, labels, epochs=4, batch_size=16, verbose=0).history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]

    signatures = {}
    for name, (serving, signatures[name]) in (("mixed", _serving_default(model, tmp_path)),
                                              ("float32", float32_text_serving)):
        answer = serving(text=tf.constant(["a fine film"]))
        assert answer["probabilities"].dtype == tf.float32
        np.testing.assert_allclose(answer["probabilities"].numpy().sum(), 1.0, atol=1e-3)
    assert signatures["mixed"] == signatures["float32"]


def _signature_dtypes(model, folder):
    loaded = tf.saved_model.load(str(model.export(folder)))
    return {name: _dtypes(function) for name, function in loaded.signatures.items()}


# The signatures a float32 export has (docs/CONVENTIONS, and the float32
# exports' own tests in test_zoo_image_classifier.py / test_zoo_translator.py).
FLOAT32_SIGNATURES = {
    "image": {
        "serving_default": ({"image_bytes": tf.string},
                            {"probabilities": tf.float32, "label": tf.string, "label_id": tf.int64}),
        "predict_images": ({"images": tf.uint8},
                           {"probabilities": tf.float32, "label": tf.string, "label_id": tf.int64}),
    },
    "translator": {
        "serving_default": ({"text": tf.string}, {"translation": tf.string}),
        "translate_with_scores": ({"text": tf.string},
                                  {"translation": tf.string, "score": tf.float32}),
    },
}


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["image", "translator"])
def test_image_classifier_and_translator_export_float32_dtypes_from_float16(kind, tmp_path):
    run = TrainingRun(precision="mixed_float16", jit_compile="false")
    with run.scope():
        model, (x, y) = tiny_model(kind, tf.distribute.get_strategy())
    assert model.compute_dtype == "float16"
    losses = model.fit(x[:64], y[:64], batch_size=32, epochs=2, verbose=0).history["loss"]
    assert np.all(np.isfinite(losses))
    assert _signature_dtypes(model, tmp_path / "export") == FLOAT32_SIGNATURES[kind]


def test_jit_compile_flag_reaches_compile(tiny_classifier):
    assert TrainingRun(jit_compile="true").compile_options() == {
        "steps_per_execution": 1, "jit_compile": True}
    assert TrainingRun(jit_compile="false").compile_options(4) == {
        "steps_per_execution": 4, "jit_compile": False}
    assert "jit_compile" not in TrainingRun().compile_options()  # the model's own rule


# Attention statistics.

def test_attention_statistics_tell_attending_from_collapsed_heads():
    rng = np.random.default_rng(0)
    length = 6
    keys = np.array([[True] * 5 + [False]])  # the last key is padding
    uniform = np.where(keys, 1 / 5, 0.0)[:, None, None, :].repeat(length, 2)
    one_hot = np.zeros((1, 1, length, length))
    one_hot[..., 2] = 1.0
    peaked = rng.dirichlet(np.ones(5) * 0.3, size=(1, 1, length))
    peaked = np.concatenate([peaked, np.zeros((1, 1, length, 1))], -1)
    causal = np.tril(np.ones((length, length), bool))
    causal_uniform = causal / causal.sum(-1, keepdims=True)
    allowed = keys[:, None, None, :]
    statistics = report.attention_statistics([
        ("encoder", np.concatenate([uniform, one_hot, peaked], 1), allowed,
         np.array([[True] * 5 + [False]])),
        ("decoder", causal_uniform[None, None], causal[None, None], np.ones((1, length), bool)),
    ])
    encoder = statistics["layers"]["encoder"]
    assert [head["state"] for head in encoder] == ["uniform", "one-hot", "attends"]
    np.testing.assert_allclose(encoder[0]["entropy"], 1.0)
    np.testing.assert_allclose(encoder[1]["entropy"], 0.0, atol=1e-12)
    expected = np.mean([-(p[p > 0] * np.log(p[p > 0])).sum() / np.log(5)
                        for p in peaked[0, 0, :5]])
    np.testing.assert_allclose(encoder[2]["entropy"], expected)
    # A causal row sees only its past: uniform over it is entropy 1; the
    # first row (one key) says nothing.
    np.testing.assert_allclose(statistics["layers"]["decoder"][0]["entropy"], 1.0)
    assert statistics["heads"] == 4 and statistics["collapsed_share"] == 0.75


@pytest.mark.slow
def test_tensorboard_gets_losses_attention_statistics_maps_and_a_profile(reviews_csv, tmp_path):
    from zoo.text_classifier.train import train_text_classifier

    logs = tmp_path / "logs"
    result = train_text_classifier(
        str(reviews_csv), tmp_path / "run", epochs=2, architecture=TINY_ARCHITECTURE, verbose=0,
        run=TrainingRun(tensorboard=str(logs), profile_steps=(2, 3), export=False))
    tags = {}
    for events in logs.rglob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(events)):
            for value in event.summary.value:
                tags.setdefault(value.tag, set()).add(event.step)
    assert {"epoch_loss", "attention/mean_entropy", "attention/collapsed_share",
            "attention_entropy/block_1/head_1", "attention_entropy/block_1/head_2",
            "attention_maps/block_1"} <= set(tags)
    assert tags["attention/mean_entropy"] == {0, 1}  # every epoch
    assert list(logs.rglob("*.xplane.pb"))  # the profiled steps
    statistics = result.report["attention"]
    assert statistics["heads"] == 2 and 0.0 <= statistics["mean_entropy"] <= 1.0
    assert (tmp_path / "run" / "attention.png").exists()


# Several workers, resuming: real processes through the command line.

@pytest.mark.slow
def test_two_workers_train_like_one_process_and_only_the_chief_writes(reviews_csv, tmp_path,
                                                                     capsys):
    arguments = ["train", "text-classifier", "--data", str(reviews_csv), "--from-scratch",
                 *TINY_SIZES, "--epochs", "2", "--batch-size", "32", "--dropout", "0",
                 "--no-attention-stats"]
    workers = [
        subprocess.Popen(
            zoo_command(*arguments, "--out", "run", "--strategy", "multi_worker"), cwd=tmp_path,
            env=environment(TF_CONFIG=config), stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True)
        for config in local_cluster(2)
    ]
    # The one-process run in this process while the workers run (`main` is
    # what `python -m zoo` runs; the workers are the real command).
    code, _, err = run_main([*arguments, "--out", str(tmp_path / "alone")], capsys)
    outputs = [worker.communicate(timeout=600)[0] for worker in workers]
    for worker, output in zip(workers, outputs):
        assert worker.returncode == 0, output[-3000:]
        assert "strategy: MultiWorkerMirroredStrategy, 2 replicas (worker-" in output
    assert code == 0, err[-3000:]
    assert "written by the chief worker" in outputs[1]

    chief = json.loads((tmp_path / "run" / "report.json").read_text())
    single = json.loads((tmp_path / "alone" / "report.json").read_text())
    assert chief["steps"]["total"] == single["steps"]["total"] == 2 * 6  # 173 / 32 per epoch
    np.testing.assert_allclose(chief["history"]["loss"], single["history"]["loss"], rtol=0.02)
    np.testing.assert_allclose(chief["history"]["val_loss"], single["history"]["val_loss"],
                               rtol=0.02)
    # Only the chief wrote; the other worker's scratch folder is gone.
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "attention.png", "export", "preset", "report.json", "training_curves.png"]
    assert [p.name for p in (tmp_path / "run" / "export").iterdir()] == ["1"]
    scratch = [line.split()[-1] for line in outputs[1].splitlines() if "export:" in line]
    assert not scratch or not os.path.exists(scratch[0])

    # The chief's export answers, loaded here (a fresh process serves the
    # command line's exports in tests/test_command_line_manners.py).
    served = tf.saved_model.load(str(tmp_path / "run" / "export" / "1"))
    answer = served.signatures["serving_default"](text=tf.constant(["a warm and funny film"]))
    assert answer["label"].numpy()[0].decode() in ("fresh", "rotten")


@pytest.mark.slow
def test_ctrl_c_mid_epoch_says_how_to_resume_and_the_rerun_repeats_no_step(
        reviews_csv, tmp_path, capsys, monkeypatch):
    """The text command, stopped by Ctrl-C (the image command's run is killed
    by SIGKILL and resumed in tests/test_zoo_cli.py)."""
    import re

    # 173 texts in batches of 32: 6 steps an epoch.
    epochs, steps_per_epoch, stop_at = 3, 6, "(epoch 2, after batch 4)"
    command = zoo_command(
        "train", "text-classifier", "--data", str(reviews_csv), "--out", "run", "--from-scratch",
        *TINY_SIZES, "--epochs", str(epochs), "--batch-size", "32", "--checkpoint-every", "2",
        "--no-attention-stats", "--jit-compile", "false")
    code, first, err = interrupt_at(command, tmp_path, stop_at)
    assert code == 2, first[-2000:] + err[-2000:]
    marked = int(first.split(stop_at)[0].rsplit("checkpoint: step", 1)[1])
    assert marked == steps_per_epoch + 4
    # One line: where the run stopped and how to resume.
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    found = re.search(r"error: interrupted; the last checkpoint is (\S+) \(step (\d+)\): run the "
                      r"same command again to resume from it", lines[0])
    assert found and int(found.group(2)) >= marked, lines[0]
    stopped_at = int(found.group(2))
    assert (tmp_path / found.group(1)).is_dir()
    # The checkpoint it names is the newest whole one on disk.
    assert stopped_at == max(int(p.name.split("-")[1]) for p in (tmp_path / "run" / "backup")
                             .iterdir() if p.name.startswith("step-"))

    # The rerun in this process (`main` is what `python -m zoo` runs; the
    # interrupted run was the real command).
    monkeypatch.chdir(tmp_path)
    code, out, err = run_main(command[3:], capsys)
    assert code == 0, out[-2000:] + err[-3000:]
    assert f"resuming from the checkpoint at step {stopped_at}: epoch" in out
    summary = json.loads((tmp_path / "run" / "report.json").read_text())
    assert summary["preset"] is None  # from scratch: no body (see tests/test_default_body.py)
    total = epochs * steps_per_epoch
    assert summary["steps"] == {"total": total, "resumed_at": stopped_at,
                                "this_run": total - stopped_at}
    assert len(summary["history"]["loss"]) == epochs  # the first run's epoch is kept
    assert "Epoch 1/" not in out  # finished epochs are not run again
    assert not (tmp_path / "run" / "backup").exists()


def test_static_shapes_for_a_tpu(tiny_classifier, sentiment_sample):
    """What `--strategy tpu` sets (`TrainingRun.prepare`): every batch padded
    to the full length, partial batches dropped; shown here without a TPU."""
    from zoo import TextClassifier, Translator
    from zoo.pipeline import input_pipeline

    model = TextClassifier(num_classes=2, **TINY_ARCHITECTURE, vocabulary=tiny_classifier.vocabulary)
    model.static_shapes = True
    (texts, labels), _ = sentiment_sample
    ids = model.preprocess(tf.constant(["a", "b c"]))
    assert ids.shape == (2, TINY_ARCHITECTURE["sequence_length"])
    batches = input_pipeline(model, texts[:70], (np.array(labels[:70]) == "fresh").astype(int), 32,
                             training=True, shuffle=True, epoch=tf.Variable(0, dtype=tf.int64))
    assert int(batches.cardinality()) == 2
    assert [tuple(x.shape) for x, _ in batches] == [(32, TINY_ARCHITECTURE["sequence_length"])] * 2

    translator = Translator(**TINY_TRANSLATOR)
    translator.adapt(*number_pairs(40, seed=0))
    translator.static_shapes = True
    inputs, targets, _ = translator.preprocess_pair(tf.constant(["one"]), tf.constant(["eins"]))
    assert inputs["encoder_token_ids"].shape[1] == TINY_TRANSLATOR["source_sequence_length"]
    assert targets.shape[1] == TINY_TRANSLATOR["target_sequence_length"]


def test_skipped_batches_leave_the_rest_of_the_pass_and_are_bounded(tiny_classifier,
                                                                    sentiment_sample):
    """`skip_batches` (a resume mid-epoch) drops the first batches of a pass,
    with or without the epoch variable, and refuses to skip a whole pass."""
    from zoo.pipeline import input_pipeline

    (texts, labels), _ = sentiment_sample
    texts, labels = texts[:70], (np.array(labels[:70]) == "fresh").astype(int)
    epoch = tf.Variable(0, dtype=tf.int64)
    for extra in ({}, {"epoch": epoch, "shuffle": True, "training": True}):
        whole = [x.numpy() for x, _ in input_pipeline(tiny_classifier, texts, labels, 32, **extra)]
        rest = input_pipeline(tiny_classifier, texts, labels, 32, skip_batches=1, **extra)
        if extra:  # the same order on every pass of an epoch
            assert int(rest.cardinality()) == 2
            for ours, theirs in zip((x.numpy() for x, _ in rest), whole[1:]):
                np.testing.assert_array_equal(ours, theirs)
        assert sum(1 for _ in rest) == len(whole) - 1 == 2
        with pytest.raises(ValueError, match=r"skip_batches.*less than the 3 batches.*=3"):
            input_pipeline(tiny_classifier, texts, labels, 32, skip_batches=3, **extra)


# Hyperparameter search.

@pytest.mark.slow
def test_tune_searches_and_keeps_the_best_trial_as_a_preset(reviews_csv, tmp_path, capsys):
    from zoo import TextClassifier
    from zoo.__main__ import main

    arguments = ["tune", "text-classifier", "--data", str(reviews_csv), "--out",
                 str(tmp_path / "search"), "--trials", "2", "--epochs", "1",
                 "--max-train-examples", "96"]
    assert main(arguments) == 0
    printed = capsys.readouterr().out
    with open(tmp_path / "search" / "trials.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 and {"trial", "val_accuracy", "hidden_dim", "num_layers", "dropout",
                               "learning_rate"} <= set(rows[0])
    scores = [float(row["val_accuracy"]) for row in rows]
    assert scores == sorted(scores, reverse=True)  # best first
    assert "val_accuracy" in printed and "best:" in printed
    best = json.loads((tmp_path / "search" / "best.json").read_text())
    assert best["trial"] == rows[0]["trial"] and best["objective"] == "val_accuracy"
    model = TextClassifier.from_preset(tmp_path / "search" / "preset")
    assert model.backbone.hidden_dim == int(rows[0]["hidden_dim"])
    assert model.backbone.num_layers == int(rows[0]["num_layers"])
    trial_report = json.loads(
        (tmp_path / "search" / "trials" / best["trial"] / "report.json").read_text())
    assert trial_report["history"]["val_accuracy"][-1] == pytest.approx(best["val_accuracy"])
    assert not (tmp_path / "search" / "trials" / best["trial"] / "export").exists()

    # A rerun with the same number of trials has nothing left to do.
    assert main(arguments) == 0
    reran = [line for line in capsys.readouterr().out.splitlines()
             if line.startswith("trial ") and " with {" in line]
    assert reran == []


def test_xla_over_logical_cpu_replicas_is_refused_with_the_reason(mirrored_strategy):
    run = TrainingRun(strategy="mirrored", jit_compile="true")
    assert run.distribution is mirrored_strategy
    with pytest.raises(ValueError, match="cannot run over 2 CPU devices.*--jit-compile false"):
        run.compile_options()
    assert "jit_compile" not in TrainingRun(strategy="mirrored").compile_options()
