"""ImageClassifier: raw images through the pipeline, presets, position interpolation."""

import json
import re
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_selfattn as ksa
from conftest import TINY_VIT, write_image_folder
from zoo import ImageClassifier, TextClassifier
from zoo.image_classifier.train import choose_geometry, describe_images


def probabilities(model, inputs):
    return model.predict(inputs, verbose=0)


def test_every_input_form_gives_the_same_predictions(tiny_image_classifier, digits_sample, tmp_path):
    _, (images, _) = digits_sample
    images = images[:12]
    expected = probabilities(tiny_image_classifier, images)
    pngs = [tf.io.encode_png(i[..., None]).numpy() for i in images]
    for path, data in zip(range(len(pngs)), pngs):
        (tmp_path / f"{path}.png").write_bytes(data)
    forms = {
        "(N, H, W, 1)": images[..., None],
        "list of arrays": list(images),
        "PNG bytes": pngs,
        "file paths": [str(tmp_path / f"{i}.png") for i in range(len(pngs))],
        "tf.data, unbatched": tf.data.Dataset.from_tensor_slices(images),
        "tf.data, batched": tf.data.Dataset.from_tensor_slices(images[..., None]).batch(5),
        "tf.data of bytes": tf.data.Dataset.from_tensor_slices(pngs),
    }
    for name, inputs in forms.items():
        np.testing.assert_allclose(probabilities(tiny_image_classifier, inputs), expected,
                                   atol=1e-5, err_msg=name)


def test_grayscale_and_rgb_convert_both_ways(tiny_image_classifier, digits_sample):
    _, (images, _) = digits_sample
    gray = images[:8]
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    # A grayscale model given RGB: luma of equal channels is the gray image.
    np.testing.assert_allclose(probabilities(tiny_image_classifier, rgb),
                               probabilities(tiny_image_classifier, gray), atol=1e-4)
    # A coloured image reaches a grayscale model as its luma.
    coloured = np.stack([gray, gray // 2, 255 - gray], axis=-1).astype("float64")
    luma = (coloured @ [0.299, 0.587, 0.114]) / 255
    pixels = tiny_image_classifier.preprocessor.pixels(tf.constant(coloured.astype("uint8")))
    np.testing.assert_allclose(pixels.numpy()[..., 0], luma, atol=1e-6)
    # An RGB model given grayscale sees it repeated over the channels, and
    # RGBA loses its alpha.
    model = ImageClassifier(num_classes=3, **{**TINY_VIT, "channels": 3})
    np.testing.assert_array_equal(probabilities(model, gray), probabilities(model, rgb))
    rgba = np.concatenate([rgb, np.full_like(rgb[..., :1], 7)], axis=-1)
    np.testing.assert_array_equal(probabilities(model, rgba), probabilities(model, rgb))


def test_any_input_size_is_resized(tiny_image_classifier, digits_sample):
    _, (images, _) = digits_sample
    large = tf.image.resize(images[:8, ..., None], (56, 56)).numpy().round().astype("uint8")
    assert probabilities(tiny_image_classifier, large).shape == (8, 10)
    mixed = [images[0], large[1], np.zeros((17, 40, 3), "uint8")]
    single = [probabilities(tiny_image_classifier, [image])[0] for image in mixed]
    np.testing.assert_allclose(probabilities(tiny_image_classifier, mixed), single, atol=1e-5)
    # A same-size image is not resampled: exactly the pixels given, in [-1, 1].
    pixels = tiny_image_classifier.preprocess(tf.constant(images[:2])).numpy()
    half = np.float32(0.5)
    np.testing.assert_array_equal(pixels[..., 0], (images[:2] / np.float32(255) - half) / half)


def test_folder_of_images_trains_with_folder_names_as_labels(digits_sample, tmp_path):
    (images, labels), _ = digits_sample
    keep = np.isin(labels, ["0", "1"])
    folder = write_image_folder(tmp_path / "digits", images[keep][:60],
                                np.where(labels[keep][:60] == "0", "zero", "one"),
                                formats=("png", "jpg", "bmp", "gif"))
    (folder / "zero" / "broken.png").write_bytes(b"\x89PNG but truncated")
    # Another size and three channels among 28 x 28 grayscale digits.
    zero = images[keep][labels[keep] == "0"][0]
    big_rgb = np.repeat(tf.image.resize(zero[..., None], (45, 45)).numpy().astype("uint8"), 3, -1)
    (folder / "zero" / "big.jpeg").write_bytes(tf.io.encode_jpeg(big_rgb).numpy())
    (folder / "one" / "notes.txt").write_text("not an image, not an image suffix")
    model = ImageClassifier(num_classes=2, **TINY_VIT)
    # Without XLA, which has its own tests: compiling cost a quarter of this one.
    model.compile(optimizer=keras.optimizers.AdamW(3e-3), jit_compile=False)
    with pytest.warns(UserWarning, match="skipped 1 file"):
        model.fit(str(folder), epochs=8, batch_size=16, verbose=0)
    assert model.label_names == ["one", "zero"]
    assert model.skipped_files == [str(folder / "zero" / "broken.png")]
    with pytest.warns(UserWarning):
        _, accuracy = model.evaluate(str(folder), verbose=0)
    assert accuracy > 0.8
    # Predicting needs no labels: any folder names will do.
    unlabelled = write_image_folder(tmp_path / "new", images[:3], ["whatever"] * 3)
    assert model.predict(str(unlabelled), verbose=0).shape == (3, 2)
    given = ImageClassifier(labels=["zero", "one"], **TINY_VIT)
    given.compile(jit_compile=False)
    with pytest.warns(UserWarning):
        given.fit(folder, epochs=1, verbose=0)
    assert given.label_names == ["zero", "one"]


def test_bad_inputs_get_clear_errors(tiny_image_classifier, digits_sample, tmp_path):
    _, (images, _) = digits_sample
    with pytest.raises(TypeError, match="uint8 pixels.*float32"):
        tiny_image_classifier.predict(images.astype("float32") / 255)
    with pytest.raises(ValueError, match=r"\(N, H, W\) or \(N, H, W, C\).*\(28, 28\)"):
        tiny_image_classifier.predict(images[0])
    with pytest.raises(ValueError, match="No inputs"):
        tiny_image_classifier.predict([])
    with pytest.raises(ValueError, match="must not be empty"):
        tiny_image_classifier.predict(np.zeros((2, 0, 5), "uint8"))
    with pytest.raises(ValueError, match=r"No such image file: .*missing\.png"):
        tiny_image_classifier.predict([str(tmp_path / "missing.png")])
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"image_bytes\[1\] \(5 bytes\) is not a JPEG"):
        tiny_image_classifier.predict([tf.io.encode_png(images[0][..., None]).numpy(), b"hello"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no readable images"):
        tiny_image_classifier.evaluate(str(tmp_path / "empty"))
    one_class = write_image_folder(tmp_path / "one", images[:4], ["7"] * 4)
    model = ImageClassifier(num_classes=2, **TINY_VIT)
    model.compile()
    with pytest.raises(ValueError, match=r"single class \(.7.\)"):
        model.fit(str(one_class), epochs=1, verbose=0)
    with pytest.raises(ValueError, match="labels are its sub-folder names"):
        model.fit(str(one_class), ["a"] * 4)
    for bad in (dict(image_size=30), dict(channels=2), dict(pooling="max"),
                dict(augmentation={"shear": 0.1}), dict(augmentation={"rotation": 2})):
        with pytest.raises(ValueError):
            ImageClassifier(num_classes=2, **{**TINY_VIT, **bad})
    from zoo.image_classifier.preprocessor import ImagePreprocessor

    for name, bad in (("mean", [0.5, 0.5]), ("std", [0.2, 0.0, 0.2]), ("std", -1),
                      ("mean", "0.5"), ("std", [])):
        with pytest.raises(ValueError, match=rf"`{name}` must be one .*\(3\)\. "
                                             rf"Received: {name}={re.escape(repr(bad))}"):
            ImagePreprocessor(channels=3, **{name: bad})


class RecordingClassifier(ImageClassifier):
    """Records the batches its train and test steps receive."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        object.__setattr__(self, "seen", {"train": [], "test": []})

    def train_step(self, data):
        self.seen["train"].append(np.asarray(data[0]))
        return super().train_step(data)

    def test_step(self, data):
        self.seen["test"].append(np.asarray(data[0]))
        return super().test_step(data)


def test_augmentation_runs_in_training_only(digits_sample):
    (images, labels), _ = digits_sample
    images, labels = images[:40], labels[:40]
    model = RecordingClassifier(labels=sorted(set(labels.tolist())), **TINY_VIT,
                                augmentation=dict(translation=0.2, rotation=0.1, zoom=0.1,
                                                  flip="horizontal"))
    model.compile(run_eagerly=True)
    pixels = model.preprocess(tf.constant(images)).numpy()
    model.fit(images, labels, validation_data=(images, labels), epochs=1, batch_size=32,
              shuffle=False, verbose=0)
    # Training drops the partial batch (one batch shape for XLA); validation
    # sees every image, unaugmented.
    (trained,) = model.seen["train"]
    assert trained.shape == pixels[:32].shape and not np.allclose(trained, pixels[:32])
    np.testing.assert_array_equal(np.concatenate(model.seen["test"]), pixels)
    # The network itself holds no randomness without dropout: XLA compiles it.
    np.testing.assert_array_equal(model(pixels, training=True), model(pixels, training=False))
    assert ImageClassifier(num_classes=2, **TINY_VIT, augmentation={"rotation": 0.1}).augmenters


def test_xla_is_on_by_default_on_the_cpu(mirrored_strategy):
    model = ImageClassifier(num_classes=2, **TINY_VIT)
    model.compile()
    assert model.jit_compile is True
    with mirrored_strategy.scope():
        model = ImageClassifier(num_classes=2, **TINY_VIT)
        model.compile()
    assert model.jit_compile is False  # Keras's rule under several replicas


def test_position_embeddings_interpolate_on_the_patch_grid():
    layer = ksa.PatchEmbedding(4, 8)
    layer.build((None, 16, 12, 3))
    assert layer.grid_shape == (4, 3)
    table = layer.position_embeddings.numpy()
    np.testing.assert_array_equal(layer.resized_position_embeddings((4, 3)), table)
    resized = keras.ops.convert_to_numpy(layer.resized_position_embeddings((8, 6)))
    assert resized.shape == (1, 1 + 48, 8)
    np.testing.assert_array_equal(resized[:, 0], table[:, 0])  # the class token's kept
    # A constant grid stays constant; a grid varying along one axis only
    # keeps doing so after bicubic resizing.
    layer.position_embeddings.assign(np.concatenate(
        [table[:, :1], np.full((1, 12, 8), 0.25, "float32")], axis=1))
    np.testing.assert_allclose(layer.resized_position_embeddings((7, 5))[0, 1:], 0.25, atol=1e-6)
    rows = np.repeat(np.arange(4, dtype="float32"), 3)[None, :, None] * np.ones(8, "float32")
    layer.position_embeddings.assign(np.concatenate([table[:, :1], rows], axis=1))
    grid = keras.ops.convert_to_numpy(layer.resized_position_embeddings((8, 6)))[0, 1:].reshape(8, 6, 8)
    np.testing.assert_allclose(grid, grid[:, :1, :1] * np.ones((8, 6, 8)), atol=1e-5)
    assert np.all(np.diff(grid[:, 0, 0]) >= -1e-6)  # rows still increase


def test_preset_round_trip_and_fresh_head(tiny_image_classifier, digits_sample, tmp_path):
    _, (images, _) = digits_sample
    folder = tiny_image_classifier.save_to_preset(tmp_path / "preset")
    loaded = ImageClassifier.from_preset(folder)  # answers identically: test_preset_contract.py
    assert loaded.label_names == [str(i) for i in range(10)]
    fresh = ImageClassifier.from_preset(folder, labels=["even", "odd"])
    assert fresh.head.kernel.shape == (TINY_VIT["hidden_dim"], 2)
    for name in ("patch_embedding", "encoder_0", "encoder_1", "final_norm"):
        for a, b in zip(tiny_image_classifier.backbone.get_layer(name).get_weights(),
                        fresh.backbone.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="shape its weights"):
        ImageClassifier.from_preset(folder, hidden_dim=64)
    with pytest.raises(ValueError, match="Unknown arguments"):
        ImageClassifier.from_preset(folder, vocabulary_size=10)
    with pytest.raises(ValueError, match="it is a zoo 'image_classifier' preset. It takes .*a zoo "
                                         "'text_classifier' preset"):
        TextClassifier.from_preset(folder)
    text_preset = TextClassifier.presets["rotten_tomatoes_small"]
    with pytest.raises(ValueError, match="it is a zoo 'text_classifier' preset. It takes .*a zoo "
                                         "'image_classifier' preset"):
        ImageClassifier.from_preset(text_preset)
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    (broken / "model.weights.h5").write_bytes(b"\0" * 100)
    with pytest.raises(ValueError, match="corrupt or changed"):
        ImageClassifier.from_preset(broken)
    # A preset in the single-network layout of earlier versions (a flat config).
    from zoo.presets import preset_config, save_preset

    flat = {**preset_config(loaded.backbone), "num_classes": 10, "pooling": "gap",
            "augmentation": None}
    old = save_preset(tmp_path / "old", "image_classifier", flat,
                      lambda path: shutil.copy(folder / "model.weights.h5", path),
                      {"labels.json": (folder / "assets/labels.json").read_text()})
    with pytest.raises(ValueError, match="single-network layout of zoo versions before"):
        ImageClassifier.from_preset(old)


def test_keras_format_round_trip_gives_identical_predictions(tiny_image_classifier,
                                                             digits_sample, tmp_path):
    _, (images, _) = digits_sample
    tiny_image_classifier.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")  # no custom_objects
    np.testing.assert_array_equal(probabilities(loaded, images),
                                  probabilities(tiny_image_classifier, images))
    assert loaded.preprocessor.get_config() == tiny_image_classifier.preprocessor.get_config()
    # Compiled as it was saved (Keras skips that for a model with its own
    # `compile`): its XLA setting, its optimizer and the optimizer's state.
    assert loaded.jit_compile is tiny_image_classifier.jit_compile is False
    assert loaded.optimizer.get_config() == tiny_image_classifier.optimizer.get_config()
    assert int(loaded.optimizer.iterations) == int(tiny_image_classifier.optimizer.iterations) > 0


def test_shipped_preset_at_a_new_image_size_predicts_the_same_classes(digits_sample):
    """Loaded at 32 x 32 (8 x 8 patches instead of 7 x 7), the interpolated
    position embeddings keep the predictions on upscaled digits."""
    _, (images, labels) = digits_sample
    native = ImageClassifier.from_preset("mnist_vit_micro")
    resized = ImageClassifier.from_preset("mnist_vit_micro", image_size=32)
    assert resized.backbone.patch_embedding.position_embeddings.shape[1] == 64 + (
        native.pooling == "token")
    upscaled = tf.image.resize(images[..., None], (32, 32)).numpy().round().astype("uint8")
    before = probabilities(native, images).argmax(-1)
    after = probabilities(resized, upscaled).argmax(-1)
    assert (before == after).mean() >= 0.8, (before == after).mean()
    assert (native.display_labels() == np.array(sorted(set(labels.tolist())))).all()


def test_shipped_presets_and_configurations_are_listed():
    assert "mnist_vit_micro" in ImageClassifier.presets
    assert {"vit_tiny_16", "vit_small_16", "vit_base_16", "vit_micro_4_28",
            "vit_micro_4_32"} <= set(ImageClassifier.configurations)
    metadata = json.loads((ImageClassifier.presets["mnist_vit_micro"] / "metadata.json").read_text())
    assert metadata["training"]["test_accuracy"] >= 0.97
    model = ImageClassifier.from_configuration("vit_tiny_16", labels=["a", "b"])
    assert model.count_params() > 5_000_000 and model.grid_shape == (14, 14)
    with pytest.raises(ValueError, match="Unknown configuration"):
        ImageClassifier.from_configuration("vit_huge_14")


def test_geometry_rule_for_from_scratch_models():
    assert choose_geometry([(28, 28, False)] * 3) == dict(image_size=28, patch_size=4, channels=1)
    assert choose_geometry([(32, 32, True), (30, 34, False)]) == dict(image_size=32, patch_size=4, channels=3)
    assert choose_geometry([(224, 224, True)]) == dict(image_size=224, patch_size=16, channels=3)
    assert choose_geometry([(600, 800, True)]) == dict(image_size=224, patch_size=16, channels=3)
    assert choose_geometry([(10, 8, False)]) == dict(image_size=14, patch_size=2, channels=1)


def test_colour_is_told_by_the_pixels_not_the_channel_count(digits_sample):
    (images, _), _ = digits_sample
    gray_as_rgb = np.repeat(images[:2, ..., None], 3, axis=-1)
    coloured = gray_as_rgb.copy()
    coloured[0, 5, 5] = [255, 0, 0]
    encoded = np.array([tf.io.encode_png(i).numpy() for i in coloured], dtype=object)
    assert [c for _, _, c in describe_images(gray_as_rgb)] == [False, False]
    assert [c for _, _, c in describe_images(coloured)] == [True, False]
    assert describe_images(encoded) == [(28, 28, True), (28, 28, False)]
    assert [c for _, _, c in describe_images(images[:2, ..., None])] == [False, False]
    # (N, H, W): no channel axis, so columns must not be read as channels.
    edge = np.zeros((2, 28, 28), "uint8")
    edge[:, 3, 0] = 200
    assert describe_images(edge) == [(28, 28, False)] * 2


@pytest.mark.slow
def test_export_answers_rest_and_grpc_with_tensorflow_alone(tiny_image_classifier, digits_sample, tmp_path):
    from conftest import REPO_ROOT, run_python

    _, (images, _) = digits_sample
    images = images[:6]
    version = tiny_image_classifier.export(tmp_path / "served")
    from conftest import xla_only_ops

    assert xla_only_ops(version) == []  # the stock server need not compile anything
    assert version.name == "1"
    expected = tf.nn.softmax(probabilities(tiny_image_classifier, images)).numpy()
    np.save(tmp_path / "expected.npy", expected)
    np.save(tmp_path / "images.npy", images)
    # PNG, JPEG (lossy, so compared loosely), and an RGB PNG at another size.
    files = {"png": [tf.io.encode_png(i[..., None]).numpy() for i in images]}
    for index, data in enumerate(files["png"]):
        (tmp_path / f"{index}.png").write_bytes(data)
    out = run_python(
        f"""
        import base64, json, sys
        import numpy as np
        sys.path.insert(0, {str(REPO_ROOT / "zoo")!r})
        import serving_client
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        images = np.load("images.npy")
        expected = np.load("expected.npy")
        pngs = [open(f"{{i}}.png", "rb").read() for i in range(len(images))]
        loaded = serving_client.load("served")
        names = [str(i) for i in range(10)]

        # REST, row format, base64 bytes as TF Serving takes them.
        body = json.dumps({{"signature_name": "serving_default",
                            "instances": [{{"b64": base64.b64encode(p).decode()}} for p in pngs]}})
        rows = json.loads(serving_client.rest_predict(loaded, body))["predictions"]
        np.testing.assert_allclose([r["probabilities"] for r in rows], expected, atol=1e-5)
        assert [r["label"] for r in rows] == [names[i] for i in expected.argmax(-1)]
        assert [r["label_id"] for r in rows] == expected.argmax(-1).tolist()

        # REST, columnar, the same digits as an RGB JPEG upscaled to 56 x 56.
        big = tf.image.resize(np.repeat(images[..., None], 3, -1), (56, 56)).numpy().astype("uint8")
        jpegs = [tf.io.encode_jpeg(b, quality=98).numpy() for b in big]
        body = json.dumps({{"inputs": {{"image_bytes": [{{"b64": base64.b64encode(j).decode()}} for j in jpegs]}}}})
        outputs = json.loads(serving_client.rest_predict(loaded, body))["outputs"]
        assert (np.argmax(outputs["probabilities"], -1) == expected.argmax(-1)).mean() >= 0.8

        # REST, predict_images with uint8 pixels.
        body = json.dumps({{"signature_name": "predict_images", "instances": images[..., None].tolist()}})
        rows = json.loads(serving_client.rest_predict(loaded, body))["predictions"]
        np.testing.assert_allclose([r["probabilities"] for r in rows], expected, atol=1e-5)

        # gRPC PredictRequest.
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "image_classifier"
        request.model_spec.signature_name = "serving_default"
        request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto(pngs))
        response = predict_pb2.PredictResponse.FromString(
            serving_client.grpc_predict(loaded, request.SerializeToString()))
        np.testing.assert_allclose(tf.make_ndarray(response.outputs["probabilities"]), expected, atol=1e-5)
        assert tf.make_ndarray(response.outputs["label_id"]).dtype == np.int64

        # Bytes that are no image fail the request, naming the input; the
        # model answers the next request.
        body = json.dumps({{"instances": [{{"b64": base64.b64encode(pngs[0]).decode()}},
                                          {{"b64": base64.b64encode(b"GIF? no").decode()}}]}})
        try:
            serving_client.rest_predict(loaded, body)
            raise AssertionError("corrupt bytes were answered")
        except tf.errors.InvalidArgumentError as error:
            assert "image_bytes[1] (7 bytes) is not a JPEG, PNG, BMP or GIF image" in error.message
        try:
            serving_client.rest_predict(loaded, json.dumps({{"instances": [{{"b64": base64.b64encode(pngs[0][:50]).decode()}}]}}))
            raise AssertionError("a truncated PNG was answered")
        except tf.errors.InvalidArgumentError:
            pass
        body = json.dumps({{"instances": [{{"b64": base64.b64encode(pngs[0]).decode()}}]}})
        row = json.loads(serving_client.rest_predict(loaded, body))["predictions"][0]
        np.testing.assert_allclose(row["probabilities"], expected[0], atol=1e-5)

        # `import tensorflow` itself imports keras; our packages must stay out.
        leaked = sorted(m for m in sys.modules
                        if m.split(".")[0] in ("keras_hub", "keras_selfattn", "zoo", "tensorflow_text"))
        assert not leaked, leaked
        print("served")
        """,
        cwd=tmp_path,
    )
    assert "served" in out


@pytest.mark.slow
def test_the_recipe_path_is_deterministic(tmp_path):
    """Two fresh processes training through `reproduce_preset` (deterministic
    ops, augmentation in the pipeline) write the same weights."""
    from conftest import run_python

    for name in ("first", "second"):
        run_python(
            f"""
            from zoo.image_classifier.train import train_image_classifier
            from zoo.training import reproduce_preset
            from zoo.training_run import TrainingRun

            # The preset is what a recipe keeps: no export, figures or statistics.
            reproduce_preset(
                lambda work: train_image_classifier(
                    "mnist", work, epochs=1, max_train_examples=192, batch_size=64, verbose=0,
                    architecture=dict(hidden_dim=32, num_layers=1, num_heads=2, intermediate_dim=64),
                    run=TrainingRun(export=False, figures=False, attention_statistics=False)),
                {str(tmp_path / name)!r})
            """,
            cwd=tmp_path,
        )
    first = ImageClassifier.from_preset(tmp_path / "first")
    second = ImageClassifier.from_preset(tmp_path / "second")
    for a, b in zip(first.get_weights(), second.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_fit_and_predict_trace_their_step_once():
    # Keras builds the optimizer inside the first traced step when no
    # strategy scope is set, and the step is then traced again to lift its
    # variables out: 10 s more per run of the image command.
    from conftest import TINY_ARCHITECTURE

    for model, inputs in (
            (ImageClassifier(num_classes=2, **TINY_VIT), np.zeros((40, 28, 28), "uint8")),
            (TextClassifier(num_classes=2, **TINY_ARCHITECTURE),
             np.array(["a good film", "a bad film"] * 20))):
        traces = []
        step = model.train_step
        model.train_step = lambda data, step=step: traces.append(1) or step(data)
        model.compile(jit_compile=False)  # traced as often either way; XLA has its own test
        model.fit(inputs, np.arange(40) % 2, epochs=2, batch_size=16, verbose=0)
        assert len(traces) == 1, (type(model).__name__, len(traces))
        # Nor is the predict step traced again for the last batch of 8.
        predict_traces = []
        step = model.predict_step
        model.predict_step = lambda data, step=step: predict_traces.append(1) or step(data)
        outputs = model.predict(inputs, batch_size=16, verbose=0)
        assert len(predict_traces) == 1 and outputs.shape == (40, 2)
        np.testing.assert_allclose(outputs[32:], model.predict(inputs[32:], verbose=0),
                                   rtol=1e-5, atol=1e-6)
