"""Presets (checksummed) and the TF Serving export, served in a TF-only process."""

import json
import shutil

import numpy as np
import pytest
import tensorflow as tf

from conftest import REPO_ROOT, serve_in_clean_process
from zoo import TextClassifier, export as zoo_export
from zoo.presets import load_preset


@pytest.fixture(scope="module")
def saved_preset(tiny_classifier, tmp_path_factory):
    folder = tmp_path_factory.mktemp("presets") / "tiny"
    tiny_classifier.save_to_preset(folder)
    return folder


def copy_of(folder, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(folder, target)
    return target


TEXTS = ["a wonderful, moving film", "tedious and far too long", "", "caf\u00e9 au lait"]


def test_a_preset_keeps_its_labels_and_lists_its_files(tiny_classifier, saved_preset):
    # Identical predictions after the round trip: tests/test_preset_contract.py, for every task.
    loaded = TextClassifier.from_preset(saved_preset)
    assert loaded.label_names == tiny_classifier.label_names
    metadata = json.loads((saved_preset / "metadata.json").read_text())
    assert set(metadata["files"]) == {"config.json", "model.weights.h5",
                                      "assets/vocabulary.txt", "assets/labels.json"}


def test_keras_format_round_trip_keeps_the_vocabulary_as_an_asset(tiny_classifier, tmp_path):
    import zipfile

    import keras

    tiny_classifier.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")  # no custom_objects
    np.testing.assert_array_equal(loaded.predict(TEXTS, verbose=0),
                                  tiny_classifier.predict(TEXTS, verbose=0))
    assert loaded.vocabulary == tiny_classifier.vocabulary
    with zipfile.ZipFile(tmp_path / "model.keras") as archive:
        config = archive.read("config.json").decode()
        assets = {n.rsplit("/", 1)[-1] for n in archive.namelist() if n.startswith("assets/")}
    assert "\"vocabulary\":" not in config and "vocabulary.txt" in assets


def test_a_vocabulary_asset_over_the_bound_is_refused_by_name(tiny_classifier, tmp_path,
                                                               monkeypatch):
    import keras

    from zoo import presets

    tiny_classifier.save(tmp_path / "model.keras")
    size = len(("\n".join(tiny_classifier.vocabulary) + "\n").encode())
    monkeypatch.setattr(presets, "MAX_ASSET_BYTES", size - 1)
    with pytest.raises(ValueError, match=rf"vocabulary.txt holds {size} bytes, more than the "
                                         rf"{size - 1} a vocabulary file may"):
        keras.saving.load_model(tmp_path / "model.keras")
    monkeypatch.setattr(presets, "MAX_ASSET_BYTES", size)
    assert keras.saving.load_model(tmp_path / "model.keras").vocabulary == \
        tiny_classifier.vocabulary


def test_preset_weights_hold_no_optimizer_state(saved_preset, tiny_classifier):
    size = (saved_preset / "model.weights.h5").stat().st_size
    parameters = sum(int(np.prod(w.shape)) for w in tiny_classifier.weights)
    assert size < parameters * 4 * 1.5 + 200_000


def test_corrupt_weights_are_refused(saved_preset, tmp_path):
    folder = copy_of(saved_preset, tmp_path)
    data = bytearray((folder / "model.weights.h5").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (folder / "model.weights.h5").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="model.weights.h5 is corrupt or changed"):
        TextClassifier.from_preset(folder)


def test_missing_file_is_refused(saved_preset, tmp_path):
    folder = copy_of(saved_preset, tmp_path)
    (folder / "assets" / "vocabulary.txt").unlink()
    with pytest.raises(ValueError, match="assets/vocabulary.txt is missing"):
        TextClassifier.from_preset(folder)


def test_wrong_kind_and_unknown_names_are_refused(saved_preset, tmp_path):
    folder = copy_of(saved_preset, tmp_path)
    metadata = json.loads((folder / "metadata.json").read_text())
    metadata["kind"] = "translator"
    (folder / "metadata.json").write_text(json.dumps(metadata))
    with pytest.raises(ValueError, match="TextClassifier.from_preset cannot use .*: it is a zoo "
                                         "'translator' preset. It takes .*a zoo 'text_classifier'"):
        TextClassifier.from_preset(folder)
    with pytest.raises(ValueError, match="Unknown preset 'no_such_preset'"):
        TextClassifier.from_preset("no_such_preset")
    with pytest.raises(ValueError, match="metadata.json is missing"):
        load_preset(tmp_path, "text_classifier")


def test_new_num_classes_gives_fresh_head_on_pretrained_body(tiny_classifier, saved_preset):
    model = TextClassifier.from_preset(saved_preset, labels=["a", "b", "c"])
    assert model.num_classes == 3 and model.label_names == ["a", "b", "c"]
    for source, target in zip(tiny_classifier.layers, model.layers):
        if source.name != "classifier_head":
            for a, b in zip(source.get_weights(), target.get_weights()):
                np.testing.assert_array_equal(a, b)
    assert model.head.kernel.shape == (tiny_classifier.backbone.hidden_dim, 3)
    with pytest.raises(ValueError, match="shape its weights"):
        TextClassifier.from_preset(saved_preset, hidden_dim=64)


def test_shipped_presets_are_listed_small_and_verified():
    presets = TextClassifier.presets
    assert "rotten_tomatoes_small" in presets
    from zoo import ImageClassifier, Translator
    from zoo.text_encoder.text_encoder import TextEncoder

    assert "english_body_small" in TextEncoder.presets
    every = [folder for model in (TextClassifier, ImageClassifier, Translator, TextEncoder)
             for folder in model.presets.values()]
    assert len(every) >= 4
    total = sum(p.stat().st_size for folder in every for p in folder.rglob("*.h5"))
    assert total < 25 * 2**20  # the budget of all shipped weights together
    model = TextClassifier.from_preset("rotten_tomatoes_small")
    names, _ = model.predict_labels(["An absolute delight from start to finish.",
                                     "A tedious, joyless mess."])
    assert names == ["fresh", "rotten"]


def test_failed_export_leaves_nothing(tiny_classifier, tmp_path, monkeypatch):
    real_save = tf.saved_model.save

    def save_then_fail(*args, **kwargs):
        real_save(*args, **kwargs)  # a real, complete write...
        raise OSError("disk full")  # ...then a failure before the rename

    monkeypatch.setattr(zoo_export.tf.saved_model, "save", save_then_fail)
    with pytest.raises(OSError, match="disk full"):
        tiny_classifier.export(tmp_path / "served")
    assert list((tmp_path / "served").iterdir()) == []


def test_exports_are_numbered_versions(tiny_classifier, tmp_path):
    assert tiny_classifier.export(tmp_path / "served").name == "1"
    assert tiny_classifier.export(tmp_path / "served").name == "2"


def test_the_serving_process_stays_clean_or_stops(tmp_path):
    """The process that serves the tests' exports (tests/serving_process.py)
    proves nothing once keras-hub, the zoo or the layers are in it."""
    import os

    from serving_process import ServingProcess

    process = ServingProcess(dict(os.environ))
    try:
        assert process.run("import os; print(os.getpid())", tmp_path).strip().isdigit()
        first = process.run("import os; print(os.getpid())", tmp_path)
        assert process.run("import os; print(os.getpid())", tmp_path) == first  # one process
        with pytest.raises(AssertionError, match=r"imported \['zoo'\]: it is no longer clean"):
            process.run("import sys; sys.modules['zoo'] = sys", tmp_path)
        assert process.run("import os; print(os.getpid())", tmp_path) != first  # a new one
        with pytest.raises(AssertionError, match="ZeroDivisionError"):
            process.run("1 / 0", tmp_path)
        assert process.run("print('still answers')", tmp_path) == "still answers\n"
    finally:
        process.close()


@pytest.mark.slow
def test_export_answers_rest_and_grpc_requests_with_tensorflow_alone(tiny_classifier, tmp_path):
    from conftest import xla_only_ops

    version = tiny_classifier.export(tmp_path / "served")
    assert xla_only_ops(version) == []  # the stock server need not compile anything
    expected = tf.nn.softmax(tiny_classifier.predict(TEXTS, verbose=0)).numpy()
    np.save(tmp_path / "expected.npy", expected)
    (tmp_path / "texts.json").write_text(json.dumps(TEXTS))
    out = serve_in_clean_process(
        f"""
        import json, sys
        import numpy as np
        sys.path.insert(0, {str(REPO_ROOT / "zoo")!r})
        import serving_client  # imports tensorflow and tensorflow_text only
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        texts = json.load(open("texts.json"))
        expected = np.load("expected.npy")
        names = {tiny_classifier.label_names!r}
        loaded = serving_client.load("served")

        # REST, row format.
        body = json.dumps({{"signature_name": "serving_default", "instances": texts}})
        rows = json.loads(serving_client.rest_predict(loaded, body))["predictions"]
        np.testing.assert_allclose([r["probabilities"] for r in rows], expected, atol=1e-5)
        assert [r["label"] for r in rows] == [names[i] for i in expected.argmax(-1)]
        assert [r["label_id"] for r in rows] == expected.argmax(-1).tolist()

        # REST, columnar format, with a base64-encoded input.
        import base64
        encoded = [{{"b64": base64.b64encode(t.encode()).decode()}} for t in texts]
        body = json.dumps({{"inputs": {{"text": encoded}}}})
        outputs = json.loads(serving_client.rest_predict(loaded, body))["outputs"]
        np.testing.assert_allclose(outputs["probabilities"], expected, atol=1e-5)

        # gRPC PredictRequest.
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "text_classifier"
        request.model_spec.signature_name = "serving_default"
        request.inputs["text"].CopyFrom(tf.make_tensor_proto(texts))
        response = predict_pb2.PredictResponse.FromString(
            serving_client.grpc_predict(loaded, request.SerializeToString()))
        np.testing.assert_allclose(tf.make_ndarray(response.outputs["probabilities"]), expected, atol=1e-5)
        assert tf.make_ndarray(response.outputs["label_id"]).dtype == np.int64
        labels = [v.decode() for v in tf.make_ndarray(response.outputs["label"])]
        assert labels == [names[i] for i in expected.argmax(-1)]

        leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("keras_hub", "keras_selfattn", "zoo"))
        assert not leaked, leaked
        print("served")
        """,
        cwd=tmp_path,
    )
    assert "served" in out
