"""`python -m zoo ...` end to end on a user's CSV."""

import csv
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT


def zoo(*args, cwd):
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, "-m", "zoo", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def reviews_csv(sentiment_sample, tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    (texts, labels), _ = sentiment_sample
    with open(folder / "reviews.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["review", "sentiment"])
        writer.writerows(zip(texts[:240], labels[:240]))
    return folder / "reviews.csv"


@pytest.mark.slow
def test_train_predict_evaluate(reviews_csv, tmp_path):
    done = zoo("train", "text-classifier", "--data", str(reviews_csv), "--out", "run",
               "--epochs", "1", "--batch-size", "32", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "precision" in done.stdout and "confusion matrix" in done.stdout
    assert "validation accuracy:" in done.stdout
    for name in ("training_curves.png", "attention.png", "report.json", "preset/metadata.json",
                 "export/1/saved_model.pb"):
        assert (tmp_path / "run" / name).exists(), name
    assert (tmp_path / "run" / "training_curves.png").read_bytes()[:4] == b"\x89PNG"
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["labels"] == ["fresh", "rotten"]

    predicted = zoo("predict", "run", "a wonderful film", "a dreadful bore", cwd=tmp_path)
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    lines = predicted.stdout.strip().splitlines()
    assert len(lines) == 2 and all(line.split("\t")[0] in ("fresh", "rotten") for line in lines)

    evaluated = zoo("evaluate", "run", "--data", str(reviews_csv), cwd=tmp_path)
    assert evaluated.returncode == 0 and "accuracy:" in evaluated.stdout


def test_bad_data_gets_a_message_not_a_traceback(tmp_path):
    (tmp_path / "one_class.csv").write_text("text,label\ngood,pos\nfine,pos\nnice,pos\n")
    done = zoo("train", "text-classifier", "--data", "one_class.csv", "--out", "x", cwd=tmp_path)
    assert done.returncode == 2
    assert "error:" in done.stderr and "at least two classes" in done.stderr
    assert "Traceback" not in done.stderr
    (tmp_path / "nothing.csv").write_text("")
    done = zoo("train", "text-classifier", "--data", "nothing.csv", "--out", "x", cwd=tmp_path)
    assert done.returncode == 2 and "is empty" in done.stderr


@pytest.mark.slow
def test_interrupted_training_resumes_from_last_epoch(reviews_csv, tmp_path):
    """A run killed after its first epoch resumes at the second, not from scratch."""
    script = f"""
        import sys, keras
        from zoo.text_classifier import train

        class StopAfterFirstEpoch(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                if epoch == 0 and sys.argv[1] == "interrupt":
                    raise SystemExit(7)  # as if the machine went away

        original_fit = train.TextClassifier.fit
        def fit(self, *args, callbacks=(), **kwargs):
            seen = []
            class Record(keras.callbacks.Callback):
                def on_epoch_begin(self, epoch, logs=None):
                    seen.append(epoch)
            history = original_fit(self, *args, callbacks=[*callbacks, StopAfterFirstEpoch(), Record()], **kwargs)
            print("epochs run:", seen)
            return history
        train.TextClassifier.fit = fit
        train.train_text_classifier({str(reviews_csv)!r}, "run", epochs=3, verbose=0,
                                    architecture=dict(vocabulary_size=600, sequence_length=24, hidden_dim=32,
                                                      num_layers=1, num_heads=2, intermediate_dim=64, dropout=0.0))
    """
    import textwrap
    (tmp_path / "job.py").write_text(textwrap.dedent(script))
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    first = subprocess.run([sys.executable, "job.py", "interrupt"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=600)
    assert first.returncode == 7, first.stderr[-2000:]
    assert (tmp_path / "run" / "backup").exists()
    second = subprocess.run([sys.executable, "job.py", "resume"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "epochs run: [1, 2]" in second.stdout
    assert not (tmp_path / "run" / "backup").exists()  # removed once training completed
