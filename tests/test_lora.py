"""LoRA fine-tuning: adapters on the attention and feed-forward projections,
the rest frozen, checkpoints of adapters pinned to their base, and presets
and exports with the adapters merged."""

import json
import sys

import keras
import numpy as np
import pytest

from conftest import serves_like_predict, write_reviews_csv

TEXTS = ["a great, moving film", "dull and far too long", "superb acting", "a tedious mess"]
LABELS = ["pos", "neg", "pos", "neg"]


def adapted_model(rank=4, seed=0):
    from zoo import TextClassifier

    keras.utils.set_random_seed(seed)
    model = TextClassifier.from_preset("english_body_small", labels=["neg", "pos"],
                                       lora_rank=rank)
    model.compile(optimizer=keras.optimizers.AdamW(1e-2))
    return model


@pytest.fixture(scope="module")
def trained():
    """A LoRA model trained a few steps, with the base weights it started from."""
    model = adapted_model()
    base = {v.path: v.numpy().copy() for v in model.backbone.weights if "lora" not in v.path}
    before = model.predict(TEXTS, verbose=0)
    model.fit(TEXTS * 8, LABELS * 8, epochs=3, batch_size=8, verbose=0)
    return model, base, before


def test_only_the_adapters_and_the_head_train(trained):
    model, base, before = trained
    blocks = model.backbone.blocks
    # Query, key, value and output of the attention, and both feed-forward layers.
    adapted = [layer for block in blocks for layer in block._flatten_layers()
               if getattr(layer, "lora_enabled", False)]
    assert len(adapted) == 6 * len(blocks)
    head = {v.path for v in model.head.trainable_variables}
    assert head and {v.path for v in model.trainable_variables} == head | {
        v.path for layer in adapted for v in (layer.lora_kernel_a, layer.lora_kernel_b)}
    for variable in model.backbone.weights:
        if "lora" not in variable.path:
            np.testing.assert_array_equal(variable.numpy(), base[variable.path])
    assert np.abs(model.predict(TEXTS, verbose=0) - before).max() > 1e-3
    assert model.lora["rank"] == 4 and model.lora["base"] == "english_body_small"


def test_the_export_and_the_preset_hold_the_adapters_merged(trained, tmp_path):
    from zoo import TextClassifier

    model, _, _ = trained
    version = serves_like_predict(model, TEXTS, [{"text": t} for t in TEXTS], tmp_path)
    # Nothing new to serve: the SavedModel's variables are those of a model
    # fine-tuned whole, no adapter among them.
    import tensorflow as tf

    names = [name for name, _ in tf.train.list_variables(str(version / "variables/variables"))]
    assert names and not [n for n in names if "lora" in n]
    model.save_to_preset(tmp_path / "preset")
    reloaded = TextClassifier.from_preset(tmp_path / "preset")
    assert not getattr(reloaded, "lora", None)
    np.testing.assert_allclose(reloaded.predict(TEXTS, verbose=0), model.predict(TEXTS, verbose=0),
                               atol=1e-5)


def test_a_checkpoint_holds_the_adapters_and_resumes_only_onto_its_base(trained, tmp_path):
    from zoo.lora import load_training_state, save_training_state

    model, _, _ = trained
    written = save_training_state(model, tmp_path / "state.weights.h5")
    assert written.name == "state.adapters.npz"
    plain = tmp_path / "full.weights.h5"
    model.inference_copy().save_weights(str(plain))
    # Adapters, head and their AdamW state: a few percent of the weights alone.
    assert written.stat().st_size < 0.1 * plain.stat().st_size

    resumed = adapted_model(seed=1)
    resumed.optimizer.build(resumed.trainable_variables)
    load_training_state(resumed, tmp_path / "state.weights.h5")
    np.testing.assert_allclose(resumed.predict(TEXTS, verbose=0), model.predict(TEXTS, verbose=0),
                               atol=1e-6)
    assert int(resumed.optimizer.iterations) == int(model.optimizer.iterations)

    other = adapted_model(seed=1)
    other.backbone.weights[0].assign(other.backbone.weights[0] + 1.0)  # another base
    other.optimizer.build(other.trainable_variables)
    with pytest.raises(ValueError, match="LoRA adapters of the base 'english_body_small'"):
        load_training_state(other, tmp_path / "state.weights.h5")


def test_lora_rank_is_refused_where_it_cannot_apply():
    from zoo import TextClassifier

    for rank in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match=f"lora_rank={rank!r}"):
            TextClassifier.from_preset("english_body_small", labels=["a", "b"], lora_rank=rank)
    model = adapted_model()
    from zoo.lora import enable_lora

    with pytest.raises(ValueError, match="already enabled"):
        enable_lora(model, 2, "again")


def test_train_lora_rank_checkpoints_adapters_and_exports_them_merged(
        sentiment_sample, tmp_path, capsys, monkeypatch):
    """The command line: `--lora-rank` trains, its backups hold adapters, and
    a killed run resumes from them into the same run."""
    from conftest import run_main, run_until

    data = write_reviews_csv(tmp_path, sentiment_sample, 96)
    command = [sys.executable, "-m", "zoo", "train", "text-classifier", "--data", str(data),
               "--out", "run", "--preset", "english_body_small", "--lora-rank", "4",
               "--epochs", "2", "--batch-size", "16", "--checkpoint-every", "3",
               "--no-attention-stats"]
    seen = run_until(command, tmp_path, "checkpoint: step 3")
    assert "body: english_body_small" in seen
    backups = list((tmp_path / "run").glob("backup/step-*"))
    assert [sorted(p.name for p in b.iterdir()) for b in backups] == [
        ["state.adapters.npz", "state.json"]]
    # Resumed, and refused, in this process (the killed run was the real command).
    monkeypatch.chdir(tmp_path)
    code, out, err = run_main(command[3:], capsys)
    assert code == 0, out[-3000:] + err[-3000:]
    assert "resuming from the checkpoint at step 3" in out
    report = json.loads((tmp_path / "run/report.json").read_text())
    assert report["lora"]["rank"] == 4 and report["lora"]["base"] == "english_body_small"
    assert report["steps"]["resumed_at"] == 3
    code, _, err = run_main(["train", "text-classifier", "--data", str(data), "--out", "scratch",
                             "--from-scratch", "--lora-rank", "4"], capsys)
    assert code == 2
    assert err.strip().splitlines()[-1].startswith("error: --lora-rank")
    assert not (tmp_path / "scratch").exists()


def test_the_image_classifier_fine_tunes_adapters_and_exports_them_merged(digits_sample, tmp_path):
    import tensorflow as tf

    from zoo import ImageClassifier, Translator

    (images, labels), _ = digits_sample
    keras.utils.set_random_seed(0)
    model = ImageClassifier.from_preset("mnist_vit_micro", lora_rank=2)
    assert model.lora["rank"] == 2
    assert all("lora" in v.path for v in model.backbone.trainable_variables)
    model.compile(optimizer=keras.optimizers.AdamW(1e-2), jit_compile=False)  # XLA: own tests
    model.fit(images[:64], labels[:64], epochs=1, batch_size=32, verbose=0)
    version = model.export(tmp_path / "served")
    served = tf.saved_model.load(str(version)).signatures["serving_default"]
    encoded = [tf.io.encode_png(image[..., None]).numpy()
               for image in np.asarray(images[:4], np.uint8)]
    answer = served(image_bytes=tf.constant(encoded))["probabilities"].numpy()
    expected = tf.nn.softmax(model.predict(images[:4], verbose=0)).numpy()
    np.testing.assert_allclose(answer, expected, atol=1e-5)
    # The translator's encoder-decoder backbone has no `blocks` to adapt: one clear refusal.
    with pytest.raises(ValueError, match="LoRA adapters go on the projections of a backbone's "
                                         "blocks; TranslatorBackbone has no `blocks`"):
        Translator.from_preset("gramps_en_de_small", lora_rank=2)
