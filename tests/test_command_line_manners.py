"""The command line as a newcomer meets it: one `error:` line, no TensorFlow
start-up noise, help without starting TensorFlow, the command's own usage."""

import json
import os
import subprocess
import sys
import textwrap

from conftest import REPO_ROOT

# Each case run through `python -m zoo` in one fresh process that never
# imports TensorFlow: (argv, exit code, stdout, stderr, TensorFlow imported).
ARGUMENT_CASES = textwrap.dedent("""
    import contextlib, io, json, runpy, sys
    results = []
    for argv in json.loads(sys.argv[1]):
        out, err = io.StringIO(), io.StringIO()
        sys.argv = ["python -m zoo", *argv]
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                runpy.run_module("zoo", run_name="__main__")
                code = 0
            except SystemExit as exit:
                code = exit.code
        results.append([argv, code, out.getvalue(), err.getvalue()])
    print(json.dumps([results, "tensorflow" in sys.modules]))
""")


def zoo_in_fresh_process(*argvs):
    done = subprocess.run([sys.executable, "-c", ARGUMENT_CASES, json.dumps(argvs)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def test_help_and_argument_errors_answer_without_starting_tensorflow():
    results, tensorflow_imported = zoo_in_fresh_process(
        ["--help"],
        ["train", "--help"],
        ["predict", "--help"],
        ["train", "text-classifier", "--data", "x.csv", "--out", "run", "--epoch", "1"],
        ["predict", "run", "text", "--no-such-flag"],
        ["train", "text-classifier", "--data", "x.csv"],
    )
    assert not tensorflow_imported
    (_, code, out, _), (_, train_code, train_help, _), (_, _, predict_help, _) = results[:3]
    assert code == 0 and "{train,tune,evaluate,predict,export,convert}" in out
    assert train_code == 0 and "--verbose" in train_help and "--max-train-examples" in train_help
    assert "a label with its probability (classifiers) or a translation" in " ".join(
        predict_help.split())
    # An abbreviated flag is an error, not the flag it abbreviates, and a wrong
    # flag gets the command's usage, not the top level's.
    for (_, code, out, err), command, flag in zip(
            results[3:5], ("train", "predict"), ("--epoch 1", "--no-such-flag")):
        assert code == 2 and out == ""
        assert err.startswith(f"usage: python -m zoo {command} ")
        assert err.splitlines()[-1] == (f"python -m zoo {command}: error: "
                                        f"unrecognized arguments: {flag}")
    (_, code, _, err) = results[5]
    assert code == 2 and err.splitlines()[-1].endswith(
        "error: the following arguments are required: --out")


def test_a_command_prints_one_error_line_and_no_tensorflow_start_up_lines(tmp_path):
    environment = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    done = subprocess.run(
        [sys.executable, "-m", "zoo", "train", "text-classifier", "--data", "no_such.csv",
         "--out", "run", "--from-scratch"], cwd=tmp_path, capture_output=True, text=True,
        timeout=300, env=dict(environment, PYTHONPATH=str(REPO_ROOT)))
    # TensorFlow started (the data is read after the model is chosen), and
    # wrote its start-up lines (oneDNN, CUDA) to the file descriptor.
    assert done.returncode == 2
    assert done.stderr == "error: No such data file: no_such.csv\n"


def test_tensorflow_log_lines_are_dropped_and_everything_else_passes(capfd):
    from zoo.tensorflow_logs import without_tensorflow_logs

    with without_tensorflow_logs():
        for line in (
                b"WARNING: All log messages before absl::InitializeLog() is called are written "
                b"to STDERR\n",
                b"E0000 00:00:1796058835.315757   11192 cuda_platform.cc:52] failed call to "
                b"cuInit: INTERNAL: CUDA error\n",
                b"I0000 00:00:1796058835.3 11 cpu_feature_guard.cc:227] This TensorFlow binary\n",
                b"To enable the following instructions: AVX2 FMA, in other operations, rebuild "
                b"TensorFlow with the appropriate compiler flags.\n",
                b"Traceback (most recent call last):\n",
                b"error: something the user did\n"):
            os.write(2, line)
    assert capfd.readouterr().err == ("Traceback (most recent call last):\n"
                                      "error: something the user did\n")


def test_predict_on_a_missing_folder_says_it_does_not_exist(tmp_path, capsys):
    from zoo.__main__ import main

    assert main(["predict", str(tmp_path / "no_run"), "some text"]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: {tmp_path / 'no_run'} does not exist; expected a training output "
                   "folder or a preset folder.\n")


def test_the_serving_client_takes_a_run_folder_and_answers_mistakes_in_one_line(
        tiny_classifier, tmp_path, capsys, monkeypatch):
    from zoo import serving_client

    tiny_classifier.export(tmp_path / "run" / "export")
    answered = subprocess.run(
        [sys.executable, str(REPO_ROOT / "zoo" / "serving_client.py"), "run",
         "a warm and funny film"],  # the run folder, not run/export
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert answered.returncode == 0, answered.stderr[-2000:]
    assert answered.stderr == ""  # TensorFlow's start-up lines hidden
    label, probability, text = answered.stdout.strip().split("\t")
    assert label in tiny_classifier.display_labels() and text == "a warm and funny film"

    # The mistakes in this process (`main` is what the script runs; a fresh
    # interpreter each cost 4 s): an error that is not the user's would raise.
    monkeypatch.chdir(tmp_path)

    def refused(*args):
        code = serving_client.main(list(args))
        return code, capsys.readouterr().err

    for args, message in (
            (("no_run", "text"), "error: no_run does not exist; expected an export folder"),
            (("run/preset", "text"), "error: run/preset does not exist"),
            (("run",), "error: give a model folder and at least one input."),
            (("run", "x" * 70000), "error: A text holds at most")):
        code, err = refused(*args)
        assert code == 2, (args, err[-2000:])
        assert err.count("\n") == 1 and err.startswith(message), err[-2000:]
    # An image export refusing bytes that are no image: its own message, whole
    # (no graph node names, no stray bracket).
    from zoo import ImageClassifier

    ImageClassifier.from_preset("mnist_vit_micro").export(tmp_path / "images")
    (tmp_path / "not_an_image.png").write_text("not an image")
    assert refused("images", "not_an_image.png") == (
        2, "error: image_bytes[0] (12 bytes) is not a JPEG, PNG, BMP or GIF image\n")


def _readme_commands():
    """`{command: flags}` of every `python -m zoo COMMAND ...` line in the
    README's code blocks (continuation lines included)."""
    import re

    flags, command = {}, None
    for line in (REPO_ROOT / "README.md").read_text().splitlines():
        started = re.search(r"python -m zoo (train|tune|evaluate|predict|export|convert)\b", line)
        if started:
            command = started.group(1)
        if command:
            flags.setdefault(command, set()).update(re.findall(r"(--[a-z][a-z0-9-]+)", line))
        if not line.rstrip().endswith("\\"):
            command = None
    return flags


def test_the_readme_documents_every_flag_and_no_other():
    import re

    from zoo.image_classifier.train import EMBEDDED_DATA as DIGITS
    from zoo.text_classifier.train import DEFINITIONS_DATA, EMBEDDED_DATA as REVIEWS

    readme = (REPO_ROOT / "README.md").read_text()
    in_code = _readme_commands()
    commands = ["train", "tune", "evaluate", "predict", "export", "convert"]
    results, _ = zoo_in_fresh_process(*([command, "--help"] for command in commands))
    for command, (_, code, help_text, _) in zip(commands, results):
        assert code == 0
        offered = set(re.findall(r"(--[a-z][a-z0-9-]+)", help_text)) - {"--help"}
        # Every flag the README shows with a command is one it takes ...
        assert in_code.get(command, set()) <= offered, (command, in_code[command] - offered)
        # ... and every flag a command takes is in the README.
        undocumented = {flag for flag in offered if not re.search(rf"{flag}\b", readme)}
        assert not undocumented, (command, undocumented)
    for name in (REVIEWS, DEFINITIONS_DATA, DIGITS, "gramps"):
        assert f"--data {name}" in readme, name


def test_numbers_are_checked_as_the_command_line_reads_them():
    results, tensorflow_imported = zoo_in_fresh_process(
        *(["train", "text-classifier", "--data", "x.csv", "--out", "run", flag, value]
          for flag, value in (("--epochs", "0"), ("--epochs", "-3"), ("--batch-size", "x"),
                              ("--learning-rate", "0"), ("--dropout", "1"),
                              ("--sequence-length", "0"), ("--window-size", "-1"),
                              ("--max-train-examples", "0"), ("--checkpoint-every", "0"),
                              ("--architecture", "num_layers=2,hidden_dim=-8"),
                              ("--architecture", "num_layers"))),
        ["evaluate", "run", "--data", "x.csv", "--batch-size", "0"],
        ["tune", "text-classifier", "--data", "x.csv", "--out", "run", "--trials", "0"],
    )
    assert not tensorflow_imported  # refused before anything starts
    expected = ["--epochs: expected a whole number of at least 1; received '0'",
                "--epochs: expected a whole number of at least 1; received '-3'",
                "--batch-size: expected a whole number of at least 1; received 'x'",
                "--learning-rate: expected a number in (0, 1]; received '0'",
                "--dropout: expected a number in [0, 1); received '1'",
                "--sequence-length: expected a whole number of at least 1; received '0'",
                "--window-size: expected a whole number of at least 1; received '-1'",
                "--max-train-examples: expected a whole number of at least 1; received '0'",
                "--checkpoint-every: expected a whole number of at least 1; received '0'",
                "--architecture: expected KEY=VALUE pairs of positive whole numbers, separated "
                "by commas (num_layers=2,hidden_dim=64); received 'hidden_dim=-8'",
                "--architecture: expected KEY=VALUE pairs of positive whole numbers, separated "
                "by commas (num_layers=2,hidden_dim=64); received 'num_layers'",
                "--batch-size: expected a whole number of at least 1; received '0'",
                "--trials: expected a whole number of at least 1; received '0'"]
    for (_, code, out, err), message in zip(results, expected):
        assert code == 2 and out == ""
        assert err.splitlines()[-1].endswith(f"error: argument {message}"), err


def test_a_small_validation_split_is_one_warning_and_a_validation_file_replaces_it(
        tmp_path, capsys):
    import numpy as np

    from zoo.text_classifier.train import load_training_data

    rows = [f"text {i},{'ab'[i % 2]}\n" for i in range(12)]
    (tmp_path / "small.csv").write_text("text,label\n" + "".join(rows))
    (tmp_path / "held.csv").write_text("text,label\n" + "".join(rows[:6]))
    train, validation, _, _ = load_training_data(str(tmp_path / "small.csv"))
    assert len(validation[0]) == 1 and len(train[0]) == 11
    assert capsys.readouterr().out.splitlines()[-1] == (
        "warning: the validation split holds 1 example (10% of 12), fewer than the 20 that "
        "make its figures more than noise: give more data, or a separate file with "
        "--validation-data.")
    train, validation, _, _ = load_training_data(str(tmp_path / "small.csv"),
                                                 validation_data=str(tmp_path / "held.csv"))
    assert len(train[0]) == 12 and list(validation[0]) == [f"text {i}" for i in range(6)]
    assert np.asarray(validation[1]).tolist() == ["a", "b"] * 3
    assert "warning" not in capsys.readouterr().out


def test_the_zoo_on_another_backend_is_one_clear_error(tmp_path):
    """The layers run on JAX; the zoo (tensorflow-text, SavedModel,
    tf.distribute) says in one message that it needs TensorFlow."""
    import importlib.util

    import pytest

    from conftest import environment

    if importlib.util.find_spec("jax") is None:
        pytest.skip("the jax extra is not installed")  # `make test` installs it
    done = subprocess.run([sys.executable, "-c", "import zoo"], cwd=tmp_path,
                          env=environment(KERAS_BACKEND="jax"), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert lines[-1] == (
        "ImportError: The zoo runs on Keras's TensorFlow backend, and this process runs on "
        "'jax' (KERAS_BACKEND): set KERAS_BACKEND=tensorflow to use it. The layers of "
        "keras_selfattn run on JAX as on TensorFlow.")
    assert len(lines) <= 6, done.stderr  # the import line, not a deep traceback
