"""ViT checkpoints as zoo image models: keras-hub presets and Hugging Face
folders against keras-hub and a float64 NumPy ViT, fine-tuning, serving from
image bytes with TensorFlow alone, the command line."""

import base64
import json
import math

import numpy as np
import pytest

from conftest import serves_like_predict, write_image_folder

keras_hub = pytest.importorskip("keras_hub")

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
SIZES = dict(hidden=16, inner=32, layers=2, heads=2, image=32, patch=8)


def write_hugging_face_vit(folder, rng):
    """A small random ViT in Hugging Face's layout and tensor names (as
    `google/vit-*`), with ImageNet's mean and std; returns its tensors and config."""
    from safetensors.numpy import save_file

    folder.mkdir()
    d, inner, p = SIZES["hidden"], SIZES["inner"], SIZES["patch"]
    tokens = (SIZES["image"] // p) ** 2 + 1
    config = {"model_type": "vit", "image_size": SIZES["image"], "patch_size": p,
              "num_channels": 3, "hidden_size": d, "num_hidden_layers": SIZES["layers"],
              "num_attention_heads": SIZES["heads"], "intermediate_size": inner,
              "hidden_act": "gelu", "layer_norm_eps": 1e-12, "qkv_bias": True,
              "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "do_normalize": True, "do_rescale": True, "rescale_factor": 1 / 255,
        "image_mean": IMAGENET_MEAN, "image_std": IMAGENET_STD,
        "size": {"height": SIZES["image"], "width": SIZES["image"]}}))

    def random(*shape, scale=0.3):
        return rng.normal(0, scale, shape).astype("float32")

    t = {"embeddings.cls_token": random(1, 1, d),
         "embeddings.position_embeddings": random(1, tokens, d),
         "embeddings.patch_embeddings.projection.weight": random(d, 3, p, p, scale=0.1),
         "embeddings.patch_embeddings.projection.bias": random(d),
         "layernorm.weight": 1 + random(d), "layernorm.bias": random(d)}
    for i in range(SIZES["layers"]):
        q = f"encoder.layer.{i}."
        for name in ("attention.attention.query", "attention.attention.key",
                     "attention.attention.value", "attention.output.dense"):
            t[q + name + ".weight"], t[q + name + ".bias"] = random(d, d), random(d)
        t[q + "intermediate.dense.weight"], t[q + "intermediate.dense.bias"] = \
            random(inner, d), random(inner)
        t[q + "output.dense.weight"], t[q + "output.dense.bias"] = random(d, inner), random(d)
        for name in ("layernorm_before", "layernorm_after"):
            t[q + name + ".weight"], t[q + name + ".bias"] = 1 + random(d), random(d)
    save_file({"vit." + k: v for k, v in t.items()}, str(folder / "model.safetensors"))
    return t, config


def numpy_vit(t, images, config, mean, std):
    """ViT's forward pass in float64 NumPy from Hugging Face tensors, on uint8
    images `(B, H, W, 3)` already at the model's size."""
    t = {k: np.asarray(v, "float64") for k, v in t.items()}
    eps, heads, p = config["layer_norm_eps"], config["num_attention_heads"], config["patch_size"]
    x = (images / 255.0 - np.asarray(mean)) / np.asarray(std)
    b, h, w, c = x.shape
    # (B, rows, p, columns, p, C) -> one row of C*p*p per patch, in the
    # convolution kernel's (C, p, p) order.
    patches = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 5, 2, 4)
    patches = patches.reshape(b, (h // p) * (w // p), c * p * p)
    kernel = t["embeddings.patch_embeddings.projection.weight"].reshape(-1, c * p * p)
    x = patches @ kernel.T + t["embeddings.patch_embeddings.projection.bias"]
    x = np.concatenate([np.broadcast_to(t["embeddings.cls_token"], (b, 1, x.shape[-1])), x], 1)
    x = x + t["embeddings.position_embeddings"]

    def norm(y, prefix):
        mu, var = y.mean(-1, keepdims=True), y.var(-1, keepdims=True)
        return (y - mu) / np.sqrt(var + eps) * t[prefix + ".weight"] + t[prefix + ".bias"]

    def dense(y, prefix):
        return y @ t[prefix + ".weight"].T + t[prefix + ".bias"]

    def split(y):
        return y.reshape(*y.shape[:2], heads, -1).transpose(0, 2, 1, 3)

    gelu = np.vectorize(lambda v: 0.5 * v * (1 + math.erf(v / math.sqrt(2))))
    for i in range(config["num_hidden_layers"]):
        q = f"encoder.layer.{i}."
        y = norm(x, q + "layernorm_before")
        qs, ks, vs = (split(dense(y, q + f"attention.attention.{n}"))
                      for n in ("query", "key", "value"))
        logits = qs @ ks.transpose(0, 1, 3, 2) / np.sqrt(qs.shape[-1])
        weights = np.exp(logits - logits.max(-1, keepdims=True))
        weights /= weights.sum(-1, keepdims=True)
        context = (weights @ vs).transpose(0, 2, 1, 3).reshape(x.shape)
        x = x + dense(context, q + "attention.output.dense")
        x = x + dense(gelu(dense(norm(x, q + "layernorm_after"), q + "intermediate.dense")),
                      q + "output.dense")
    return norm(x, "layernorm")


@pytest.fixture(scope="module")
def hugging_face_vit(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf") / "vit"
    tensors, config = write_hugging_face_vit(folder, np.random.default_rng(5))
    return folder, tensors, config


@pytest.fixture(scope="module")
def hub_vit(tmp_path_factory):
    """A small randomly initialized keras-hub ViTBackbone with an image
    converter carrying ImageNet's mean and std, saved by `save_to_preset`."""
    import keras

    keras.utils.set_random_seed(4)
    backbone = keras_hub.models.ViTBackbone(
        image_shape=(SIZES["image"], SIZES["image"], 3), patch_size=SIZES["patch"],
        num_layers=SIZES["layers"], num_heads=SIZES["heads"], hidden_dim=SIZES["hidden"],
        mlp_dim=SIZES["inner"])
    for variable in backbone.weights:  # random norms and class token show a misplaced weight
        if variable.path.endswith(("gamma", "beta", "class_token")):
            variable.assign(np.random.default_rng(1).normal(1, 0.3, variable.shape))
    folder = tmp_path_factory.mktemp("hub_vit")
    backbone.save_to_preset(str(folder))
    std = np.asarray(IMAGENET_STD)
    keras_hub.layers.ViTImageConverter(
        image_size=(SIZES["image"], SIZES["image"]), scale=(1 / (255 * std)).tolist(),
        offset=(-np.asarray(IMAGENET_MEAN) / std).tolist()).save_to_preset(str(folder))
    return folder, backbone


def random_images(count, size=SIZES["image"], seed=0):
    return np.random.default_rng(seed).integers(0, 256, (count, size, size, 3), dtype="uint8")


def test_keras_hub_vit_preset_converts_to_an_equal_backbone_and_preprocessor(hub_vit):
    from zoo.image_classifier.image_classifier import load_body

    folder, hub = hub_vit
    backbone, preprocessor = load_body(folder)
    assert backbone.count_params() == hub.count_params()
    np.testing.assert_allclose(preprocessor.mean, IMAGENET_MEAN, atol=1e-6)
    np.testing.assert_allclose(preprocessor.std, IMAGENET_STD, atol=1e-6)
    images = random_images(3)
    converter = keras_hub.layers.ImageConverter.from_preset(str(folder))
    theirs_pixels = np.asarray(converter(images.astype("float32")))
    ours_pixels = preprocessor(images).numpy()
    assert np.abs(ours_pixels - theirs_pixels).max() < 1e-4
    ours = backbone(ours_pixels)["sequence_output"].numpy()
    theirs = np.asarray(hub(theirs_pixels))
    assert ours.shape == theirs.shape == (3, 17, SIZES["hidden"])
    assert np.abs(ours - theirs).max() < 1e-4


def test_hugging_face_vit_equals_a_float64_numpy_vit(hugging_face_vit):
    from zoo.image_classifier.image_classifier import load_body

    folder, tensors, config = hugging_face_vit
    backbone, preprocessor = load_body(folder)
    assert backbone.layer_norm_epsilon == 1e-12 and backbone.class_token
    images = random_images(4, seed=1)
    expected = numpy_vit(tensors, images, config, IMAGENET_MEAN, IMAGENET_STD)
    ours = backbone(preprocessor(images))["sequence_output"].numpy()
    assert np.abs(ours - expected).max() < 1e-4
    # keras-hub reads the same folder to the same network, at its own epsilon.
    hub = keras_hub.models.Backbone.from_preset(str(folder))
    pixels = preprocessor(images).numpy()
    assert np.abs(np.asarray(hub(pixels)) - ours).max() < 1e-3


def test_a_vit_classifier_fine_tunes_saves_and_serves_from_image_bytes(
        hugging_face_vit, digits_sample, tmp_path):
    import keras
    import tensorflow as tf

    from zoo import ImageClassifier

    (images, labels), _ = digits_sample
    keras.utils.set_random_seed(0)
    model = ImageClassifier.from_preset(hugging_face_vit[0], labels=["even", "odd"])
    assert model.pooling == "token" and model.image_size == [32, 32] and model.channels == 3
    hidden = model.backbone(model.preprocessor(images[:2]))["sequence_output"]
    assert hidden.shape == (2, 17, SIZES["hidden"])
    parity = np.where(labels[:64].astype(int) % 2, "odd", "even")
    # Without XLA, the ViT's default on a CPU: compiling is not what this checks.
    model.compile(optimizer=keras.optimizers.AdamW(1e-3), jit_compile=False)
    history = model.fit(images[:64], parity, epochs=2, batch_size=16, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    model.save_to_preset(tmp_path / "preset")
    reloaded = ImageClassifier.from_preset(tmp_path / "preset")
    reloaded.compile(jit_compile=False)  # predicts as `model` does, bit for bit
    np.testing.assert_array_equal(reloaded.predict(images[:8], verbose=0),
                                  model.predict(images[:8], verbose=0))
    pngs = [tf.io.encode_png(image[..., None]).numpy() for image in images[:6]]
    serves_like_predict(reloaded, pngs, [{"b64": base64.b64encode(p).decode()} for p in pngs],
                        tmp_path)


def test_vit_checkpoints_through_the_command_line(hub_vit, hugging_face_vit, digits_sample,
                                                  tmp_path, capsys):
    from zoo import ImageClassifier
    from zoo.__main__ import main

    (images, labels), _ = digits_sample
    data = write_image_folder(tmp_path / "digits", images[:48],
                              np.where(labels[:48].astype(int) % 2, "odd", "even"))
    assert main(["convert", str(hugging_face_vit[0]), "--to", str(tmp_path / "vit_preset")]) == 0
    assert "ViT, 2 blocks" in capsys.readouterr().out
    converted = ImageClassifier.from_preset(tmp_path / "vit_preset", labels=["a", "b"])
    direct = ImageClassifier.from_preset(hugging_face_vit[0], labels=["a", "b"])
    np.testing.assert_array_equal(converted.backbone(np.ones((1, 32, 32, 3)))["sequence_output"],
                                  direct.backbone(np.ones((1, 32, 32, 3)))["sequence_output"])
    # The whole job from the Hugging Face folder (the text checkpoints' command-line
    # test runs it from a keras-hub folder too); a keras-hub ViT preset converts.
    run = str(tmp_path / "run")
    assert main(["train", "image-classifier", "--data", str(data), "--preset",
                 str(hugging_face_vit[0]), "--epochs", "1", "--out", run,
                 "--no-attention-stats", "--jit-compile", "false"]) == 0
    capsys.readouterr()
    assert main(["predict", run, str(next((data / "odd").iterdir()))]) == 0
    assert capsys.readouterr().out.split("\t")[0] in ("even", "odd")
    assert main(["evaluate", run, "--data", str(data)]) == 0
    assert "accuracy" in capsys.readouterr().out
    assert main(["export", run, "--to", f"{run}/served"]) == 0
    assert (tmp_path / "run" / "served" / "1" / "saved_model.pb").is_file()
    assert main(["convert", str(hub_vit[0]), "--to", str(tmp_path / "hub_preset")]) == 0
    from_hub = ImageClassifier.from_preset(tmp_path / "hub_preset", labels=["a", "b"])
    assert from_hub.backbone.num_layers == 2 and from_hub.preprocessor.std != [0.5] * 3


def test_unsupported_vit_checkpoints_are_refused(hugging_face_vit, hub_vit, tmp_path):
    import shutil

    from zoo import ImageClassifier, TextClassifier, TextEncoder

    def refused(folder, message, model=ImageClassifier):
        with pytest.raises(ValueError, match=message):
            model.from_preset(folder, labels=["a", "b"])

    folder = hugging_face_vit[0]
    refused(tmp_path / "nowhere", "Unknown preset")
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    shutil.copy(folder / "config.json", no_weights)
    refused(no_weights, "holds no model.safetensors")
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
    refused(bert, "ImageClassifier.from_preset cannot use .*bert: it is a Hugging Face 'bert' "
                  "checkpoint. It takes .*a Hugging Face 'vit' checkpoint")
    rescaled = tmp_path / "rescaled"
    shutil.copytree(folder, rescaled)
    (rescaled / "preprocessor_config.json").write_text(json.dumps({"rescale_factor": 1.0}))
    refused(rescaled, "rescale_factor=1.0")
    refused(hub_vit[0], "TextClassifier.from_preset cannot use .*: it is a keras-hub ViTBackbone "
                        "preset. It takes .*a keras-hub BertBackbone preset", TextClassifier)
    with pytest.raises(ValueError, match="it is a zoo 'text_encoder' preset. It takes .*"
                                         "a zoo 'image_classifier' preset"):
        ImageClassifier.from_preset(TextEncoder.presets["english_body_small"], labels=["a", "b"])
