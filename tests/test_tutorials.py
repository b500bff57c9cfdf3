"""The tutorials run end to end (in their fast mode)."""


import pytest

from conftest import REPO_ROOT, run_python


@pytest.mark.slow
def test_layers_quickstart_runs(tmp_path):
    out = run_python(
        f"""
        import sys
        sys.argv = ["layers_quickstart.py", "--fast", "--out", {str(tmp_path)!r}]
        import runpy
        runpy.run_path({str(REPO_ROOT / "tutorials" / "layers_quickstart.py")!r}, run_name="__main__")
        """,
        cwd=tmp_path,
    )
    assert "Test accuracy:" in out
    assert "identical predictions" in out
    assert (tmp_path / "sentiment.keras").exists()


@pytest.mark.slow
def test_fine_tune_tutorial_runs(tmp_path):
    out = run_python(
        f"""
        import sys, runpy
        sys.argv = ["fine_tune_text_classifier.py", "--fast", "--work", {str(tmp_path)!r}]
        runpy.run_path({str(REPO_ROOT / "tutorials" / "fine_tune_text_classifier.py")!r}, run_name="__main__")
        """,
        cwd=tmp_path,
    )
    assert "rotten_tomatoes_small" in out
    assert "confusion matrix" in out
    assert (tmp_path / "served" / "1" / "saved_model.pb").exists()
    assert out.count("liked") >= 2
