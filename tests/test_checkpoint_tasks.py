"""Real checkpoints as zoo tasks: fine-tuning, serving from strings with
TensorFlow alone, the command line, and two replicas."""

import numpy as np
import pytest

from conftest import serves_like_predict, write_reviews_csv
from checkpoint_fixtures import write_hugging_face_folder
from test_checkpoints import TEXTS

keras_hub = pytest.importorskip("keras_hub")


def test_a_classifier_on_minilm_fine_tunes_exports_and_serves_from_strings(minilm, tmp_path):
    import keras

    from zoo import TextClassifier

    backbone, preprocessor = minilm
    # The session's MiniLM is shared: tests/test_checkpoints.py compares it
    # with the checkpoint as read, in whichever order pytest-xdist runs them.
    as_read = backbone.get_weights()
    try:
        keras.utils.set_random_seed(0)
        model = TextClassifier(backbone=backbone, preprocessor=preprocessor, labels=["neg", "pos"])
        assert model.backbone is backbone and model.preprocessor is preprocessor
        hidden = model.backbone(model.preprocessor(["good"]))["sequence_output"]
        assert hidden.shape[-1] == 384
        texts = ["a great, moving film", "dull and far too long", "superb acting",
                 "a tedious mess"] * 4
        labels = ["pos", "neg", "pos", "neg"] * 4
        model.compile(optimizer=keras.optimizers.AdamW(1e-4))
        model.fit(texts, labels, epochs=1, batch_size=8, verbose=0)
        assert serves_like_predict(model, TEXTS, [{"text": t} for t in TEXTS],
                                   tmp_path).name == "1"
    finally:
        backbone.set_weights(as_read)


def test_a_roberta_classifier_serves_from_strings_with_its_byte_pair_tokenizer(hub_presets, tmp_path):
    from zoo import TextClassifier

    model = TextClassifier.from_preset(hub_presets["roberta"][0], labels=["a", "b"])
    assert model.preprocessor.kind == "byte_pair"
    model.save_to_preset(tmp_path / "preset")  # vocabulary and merges as assets
    assert (tmp_path / "preset/assets/merges.txt").is_file()
    reloaded = TextClassifier.from_preset(tmp_path / "preset")
    texts = ["a quick fox", "fox", "", "a a a quick"]
    np.testing.assert_array_equal(reloaded.predict(texts, verbose=0), model.predict(texts, verbose=0))
    serves_like_predict(reloaded, texts, [{"text": t} for t in texts], tmp_path)


@pytest.mark.slow
def test_command_line_converts_trains_predicts_evaluates_and_exports_from_checkpoints(
        hub_presets, sentiment_sample, rng, tmp_path, capsys):
    from zoo import TextClassifier
    from zoo.__main__ import main

    data = write_reviews_csv(tmp_path, sentiment_sample, 96)
    assert main(["convert", str(hub_presets["bert"][0]), "--to", str(tmp_path / "bert_preset")]) == 0
    model = TextClassifier.from_preset(tmp_path / "bert_preset", labels=["a", "b"])
    assert model.backbone.num_layers == 2
    capsys.readouterr()
    assert main(["convert", str(tmp_path / "missing"), "--to", str(tmp_path / "x")]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("error: Unknown preset"), error
    # A keras-hub preset folder and a Hugging Face folder (MiniLM's is trained by
    # test_zoo_cli.py::test_train_predict_evaluate_on_the_default_body).
    write_hugging_face_folder(tmp_path / "hf_bert", "bert", rng)
    for name, preset in (("hub", hub_presets["distil_bert"][0]), ("hf", tmp_path / "hf_bert")):
        run = str(tmp_path / f"run_{name}")
        assert main(["train", "text-classifier", "--data", str(data), "--preset", str(preset),
                     "--epochs", "1", "--out", run, "--no-attention-stats"]) == 0
        capsys.readouterr()
        assert main(["predict", run, "a great film"]) == 0
        assert capsys.readouterr().out.split("\t")[0] in ("fresh", "rotten")
        if name == "hf":
            continue  # both runs hold the same kind of preset: one evaluates and exports
        assert main(["evaluate", run, "--data", str(data)]) == 0
        assert "accuracy" in capsys.readouterr().out
        assert main(["export", run, "--to", f"{run}/served"]) == 0
        assert (tmp_path / f"run_{name}" / "served" / "1" / "saved_model.pb").is_file()


def test_a_converted_checkpoint_fine_tunes_over_two_replicas_as_on_one(hub_presets,
                                                                       mirrored_strategy):
    import keras

    from zoo import TextClassifier

    texts = ["a quick fox", "fox", "quick quick", "a fox a"] * 4
    labels = ["a", "b", "a", "b"] * 4
    losses = []
    for strategy in (None, mirrored_strategy):
        keras.utils.set_random_seed(0)
        scope = strategy.scope() if strategy else keras.name_scope("one")
        with scope:
            model = TextClassifier.from_preset(hub_presets["roberta"][0], labels=["a", "b"],
                                               dropout=0.0)
            model.compile(optimizer=keras.optimizers.SGD(0.1))
        history = model.fit(texts, labels, epochs=1, batch_size=8, shuffle=False, verbose=0)
        losses.append(history.history["loss"])
    assert mirrored_strategy.num_replicas_in_sync == 2
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-4)
