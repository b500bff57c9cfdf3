"""Fine-tuning that stops when it is done (issue 33): the stopping rule
alone, across a resume, and a run through the command line."""

import json

import keras
import numpy as np
import pytest

from conftest import TINY_SIZES, write_reviews_csv


def small_model():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.stop_training = False  # as `fit` sets it
    return model


def test_the_rule_stops_after_patience_and_puts_back_the_best_weights(tmp_path):
    from zoo.resume import StopWhenDone

    model = small_model()
    stopper = StopWhenDone(2, tmp_path / "best.weights.h5")
    stopper.set_model(model)
    weights = {}
    for epoch, accuracy in enumerate([0.5, 0.7, 0.7, 0.6]):
        model.set_weights([np.full((2, 1), epoch, "float32"), np.full((1,), epoch, "float32")])
        weights[epoch] = model.get_weights()
        stopper.on_epoch_end(epoch, {"val_accuracy": accuracy})
        assert model.stop_training == (epoch == 3)  # 2 epochs after the best (epoch 1)
    assert stopper.stopped and stopper.best_epoch == 1
    assert stopper.keep_best(40) == ("stopped at epoch 4 of 40: validation accuracy 0.700 "
                                     "since epoch 2, whose weights are kept")
    np.testing.assert_array_equal(model.get_weights()[0], weights[1][0])
    # An equal accuracy is no improvement, a NaN is none either, and
    # patience 0 never stops and never puts weights back.
    never = StopWhenDone(0)
    never.set_model(model)
    for epoch, accuracy in enumerate([0.9, float("nan"), 0.1, 0.1, 0.1]):
        never.on_epoch_end(epoch, {"val_accuracy": accuracy})
    assert not never.stopped and never.best_epoch == 0 and never.keep_best(5) is None
    # On a small validation split the accuracy settles: an equal one with a
    # lower validation loss is an improvement (and resets the patience).
    tied = StopWhenDone(2)
    tied.set_model(model)
    for epoch, (accuracy, loss) in enumerate([(0.9, 0.5), (0.9, 0.4), (0.9, 0.45), (0.9, 0.3),
                                              (0.9, 0.35), (0.9, 0.31)]):
        tied.on_epoch_end(epoch, {"val_accuracy": accuracy, "val_loss": loss})
    assert tied.best_epoch == 3 and tied.stopped_epoch == 5


def test_a_resumed_run_keeps_the_rule_and_the_best_weights_from_before(tmp_path):
    from zoo.resume import StopWhenDone

    model = small_model()
    before = StopWhenDone(2, tmp_path / "best.weights.h5")
    before.set_model(model)
    for epoch, accuracy in enumerate([0.5, 0.8, 0.6]):
        model.set_weights([np.full((2, 1), epoch, "float32"), np.full((1,), epoch, "float32")])
        before.on_epoch_end(epoch, {"val_accuracy": accuracy})
    assert not (tmp_path / "best.weights.h5").exists()  # written only with a checkpoint
    before.persist()  # as the checkpoint at epoch 3's end does
    np.testing.assert_array_equal(model.get_weights()[0], np.full((2, 1), 2))  # left as it was
    best = [np.full((2, 1), 1, "float32"), np.full((1,), 1, "float32")]
    # The process dies; a new one resumes from the checkpoint's history.
    resumed_model = small_model()
    resumed = StopWhenDone(2, tmp_path / "best.weights.h5")
    resumed.set_model(resumed_model)
    resumed.resume({"val_accuracy": [0.5, 0.8, 0.6], "loss": [1.0, 0.5, 0.4]})
    assert resumed.best_epoch == 1 and not resumed.stopped
    resumed.on_epoch_end(3, {"val_accuracy": 0.7})
    assert resumed.stopped and resumed.stopped_epoch == 3
    assert resumed.keep_best(10).startswith("stopped at epoch 4 of 10: validation accuracy 0.800")
    for ours, expected in zip(resumed_model.get_weights(), best):
        np.testing.assert_array_equal(ours, expected)


@pytest.mark.slow
def test_a_run_stops_when_validation_stops_improving(sentiment_sample, tmp_path, capsys):
    from zoo.__main__ import main

    data = write_reviews_csv(tmp_path, sentiment_sample, 240)
    assert main(["train", "text-classifier", "--data", str(data), "--out", str(tmp_path / "run"),
                 "--from-scratch", *TINY_SIZES, "--epochs", "30", "--patience", "1",
                 "--batch-size", "64",
                 "--no-attention-stats"]) == 0
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "run/report.json").read_text())
    # Not a terminal: one plain line per epoch, no colour codes, no redrawn bar.
    assert "\x1b[" not in out and "\b" not in out
    epoch_lines = [line for line in out.splitlines() if line.startswith("Epoch ")]
    progress_lines = [line for line in out.splitlines() if line.startswith("4/4 - ")]
    assert len(epoch_lines) == len(progress_lines) == report["epochs_trained"], out
    trained, best = report["epochs_trained"], report["best_epoch"]
    assert report["epochs"] == 30 and report["patience"] == 1 and trained < 30
    accuracy = report["history"]["val_accuracy"]
    assert len(accuracy) == trained and trained == best + 1  # one epoch past the best
    assert max(accuracy) == accuracy[best - 1] and accuracy[-1] <= accuracy[best - 1]
    assert (f"stopped at epoch {trained} of 30: validation accuracy {accuracy[best - 1]:.3f} "
            f"since epoch {best}, whose weights are kept") in out
    assert not (tmp_path / "run/backup").exists()  # done: the best weights went with it
    # The kept weights are the best epoch's: the preset scores its accuracy.
    from zoo import TextClassifier
    from zoo.text_classifier.train import load_training_data

    _, validation, _, _ = load_training_data(str(data))
    kept = TextClassifier.from_preset(tmp_path / "run/preset")
    predicted, _ = kept.predict_labels(list(validation[0]))
    assert np.mean(np.asarray(predicted) == validation[1]) == pytest.approx(
        accuracy[best - 1], abs=1e-6)


def test_checkpoints_come_by_time_and_at_the_end_and_two_are_kept(tmp_path):
    from zoo.resume import StopWhenDone, TrainingCheckpoint

    def fit(every_seconds, epochs=4, folder="backup"):
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        model.compile("adam", "mse")
        # Any logged number serves to give the best-weights file something to keep.
        stopper = StopWhenDone(0, tmp_path / folder / "best.weights.h5", monitor="loss")
        saves = []
        checkpoint = TrainingCheckpoint(tmp_path / folder, every_seconds=every_seconds,
                                        on_save=[stopper.persist, lambda: saves.append(1)])
        model.fit(np.ones((8, 3)), np.ones((8, 2)), batch_size=4, epochs=epochs, verbose=0,
                  callbacks=[stopper, checkpoint])
        return sorted(p.name for p in (tmp_path / folder).iterdir()), len(saves)

    # An hour between backups: a 4-epoch run writes one, at its end.
    written, saves = fit(3600)
    assert written == ["best.weights.h5", "step-000000008"] and saves == 1
    # No time between them: every epoch's end, the two newest kept.
    written, saves = fit(0, folder="every")
    assert written == ["best.weights.h5", "step-000000006", "step-000000008"] and saves == 4


def test_on_a_terminal_each_epoch_draws_its_bar_once_then_the_checkpoint_line(tmp_path):
    """On a terminal Keras redraws one bar in place; the epoch's end finishes
    it (with the validation metrics) before the checkpoint line, instead of
    a second bar after it."""
    import os
    import subprocess
    import sys
    import textwrap

    from conftest import environment

    script = textwrap.dedent("""
        import keras, numpy as np
        from zoo.resume import TrainingCheckpoint, resumable_fit

        class Plain(keras.Sequential):
            def fit(self, *args, seed=None, **kwargs):
                return super().fit(*args, **kwargs)

        model = Plain([keras.Input((3,)), keras.layers.Dense(2)])
        model.compile("adam", "mse")
        x, y = np.ones((8, 3)), np.ones((8, 2))
        resumable_fit(model, (x, y), (x, y), 2, 4, TrainingCheckpoint("backup", every_seconds=0))
    """)
    main, terminal = os.openpty()
    child = subprocess.Popen([sys.executable, "-c", script], cwd=tmp_path, env=environment(),
                             stdin=subprocess.DEVNULL, stdout=terminal, stderr=subprocess.DEVNULL)
    os.close(terminal)
    chunks = []
    while True:
        try:
            chunk = os.read(main, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(main)
    assert child.wait(timeout=120) == 0
    out = b"".join(chunks).decode("utf-8", "replace").replace("\r\n", "\n")
    for epoch, step in ((1, 2), (2, 4)):
        block = out.split(f"Epoch {epoch}/2")[1].split("Epoch ")[0]
        drawn, after = block.split(f"checkpoint: step {step}")
        assert "val_loss" in drawn.rstrip("\n").split("\n")[-1], drawn
        # Nothing drawn again after the checkpoint line.
        assert "2/2" not in after and "val_loss" not in after, after
