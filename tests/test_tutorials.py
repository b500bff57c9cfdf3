"""The tutorials run end to end (in their fast mode)."""

import json
import runpy
import sys

import pytest

from conftest import REPO_ROOT, serve_in_clean_process


@pytest.fixture
def run_tutorial(monkeypatch, capsys):
    """Runs `tutorials/NAME --fast ARGS` as `python` runs a script, in this
    process (a fresh interpreter per tutorial cost 4 s of start-up each; the
    tutorials set no global state beyond the seed); returns what it printed."""
    def run(name, *args, cwd):
        monkeypatch.chdir(cwd)
        monkeypatch.setattr(sys, "argv", [name, "--fast", *args])
        runpy.run_path(str(REPO_ROOT / "tutorials" / name), run_name="__main__")
        return capsys.readouterr().out
    return run


@pytest.fixture
def rest_in_the_serving_process(monkeypatch):
    """The tutorials' `rest_in_fresh_process`, answered by this worker's
    clean serving process (tensorflow and tensorflow_text only, as a fresh
    one) through the same `serving_client.py --rest`: a new TensorFlow per
    tutorial cost 5 s. The image tutorial keeps the fresh process, so both
    are run."""
    import zoo.serving_client

    def rest(model_dir, body):
        out = serve_in_clean_process(
            f"""
            import sys
            sys.path.insert(0, {str(REPO_ROOT / "zoo")!r})
            import serving_client  # imports tensorflow and tensorflow_text only
            serving_client.main(["--rest", {str(model_dir)!r}, {body!r}])
            """, cwd=model_dir)
        return json.loads(out)

    monkeypatch.setattr(zoo.serving_client, "rest_in_fresh_process", rest)


@pytest.mark.slow
def test_layers_quickstart_runs(run_tutorial, tmp_path):
    out = run_tutorial("layers_quickstart.py", "--out", str(tmp_path), cwd=tmp_path)
    assert "Test accuracy:" in out
    assert "identical predictions" in out
    assert (tmp_path / "sentiment.keras").exists()


@pytest.mark.slow
def test_fine_tune_tutorial_runs(run_tutorial, rest_in_the_serving_process, tmp_path):
    out = run_tutorial("fine_tune_text_classifier.py", "--work", str(tmp_path), cwd=tmp_path)
    assert "english_body_small" in out and "rotten_tomatoes_small" in out
    assert "confusion matrix" in out
    assert (tmp_path / "served" / "1" / "saved_model.pb").exists()
    assert out.count("liked") >= 2


@pytest.mark.slow
def test_fine_tune_image_tutorial_runs(run_tutorial, tmp_path):
    out = run_tutorial("fine_tune_image_classifier.py", "--work", str(tmp_path), cwd=tmp_path)
    assert "mnist_vit_micro" in out
    assert "confusion matrix" in out
    assert (tmp_path / "served" / "1" / "saved_model.pb").exists()
    answers = [line for line in out.splitlines() if line.startswith("  ") and ".png:" in line]
    assert len(answers) == 4 and all(("even" in a) or ("odd" in a) for a in answers)


@pytest.mark.slow
def test_train_translator_tutorial_runs(run_tutorial, rest_in_the_serving_process, tmp_path):
    out = run_tutorial("train_translator.py", "--work", str(tmp_path), cwd=tmp_path)
    assert "BLEU on 40 held-out pairs: greedy" in out
    assert (tmp_path / "served" / "1" / "saved_model.pb").exists()
    answer = out.split("REST answer:")[1].strip().splitlines()[0]
    assert len(json.loads(answer)["predictions"]) == 2
