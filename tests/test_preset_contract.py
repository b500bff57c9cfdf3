"""One loading contract (issue 32): every task and backbone, the same test.

As keras-hub's `run_preset_test`: each shipped preset loads by name, saves,
loads back with its `sha256` pinned and answers identically; a wrong pin, an
unknown name and another model's preset are refused by name. The backbones
load from their tasks' presets and from body presets the same way.
"""

import hashlib

import numpy as np
import pytest

import zoo
from zoo.guarded_files import RefusedSource

TEXTS = ["a wonderful, moving film", "tedious and far too long", "", "caf\u00e9 au lait"]
RNG = np.random.default_rng(0)
IMAGES = RNG.integers(0, 256, (3, 28, 28), dtype="uint8")
TOKENS = {"token_ids": RNG.integers(5, 300, (2, 16)).astype("int32"),
          "mask_positions": np.array([[1, 3], [2, 5]], "int32")}
# task -> (a shipped preset, what it answers)
TASKS = {
    "TextClassifier": ("rotten_tomatoes_small", lambda model: model.predict(TEXTS, verbose=0)),
    "ImageClassifier": ("mnist_vit_micro", lambda model: model.predict(IMAGES, verbose=0)),
    "TextEncoder": ("english_body_small", lambda model: np.asarray(model(TOKENS))),
    "Translator": ("gramps_en_de_small",
                   lambda model: model.translate(["the house", "my father"], beam_size=2)),
}


def metadata_sha256(folder):
    return hashlib.sha256((folder / "metadata.json").read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def shipped():
    return {name: getattr(zoo, name).from_preset(preset) for name, (preset, _) in TASKS.items()}


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_task_round_trips_its_preset_with_a_pin(name, shipped, tmp_path):
    cls = getattr(zoo, name)
    preset, answer = TASKS[name]
    assert preset in cls.presets and preset in cls.named_presets()
    model = shipped[name]
    folder = model.save_to_preset(tmp_path / "preset")
    loaded = cls.from_preset(folder, sha256=metadata_sha256(folder))
    expected, received = answer(model), answer(loaded)
    if isinstance(expected, np.ndarray):
        np.testing.assert_array_equal(received, expected)
    else:
        assert received == expected
    with pytest.raises(ValueError, match="not the pinned"):
        cls.from_preset(folder, sha256="0" * 64)
    with pytest.raises(RefusedSource, match=r"Unknown preset 'no_such_preset': it is neither a "
                                            r"shipped preset or checkpoint \(\["):
        cls.from_preset("no_such_preset")


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_task_refuses_another_models_preset_by_name(name):
    cls = getattr(zoo, name)
    for other, (preset, _) in TASKS.items():
        other_cls = getattr(zoo, other)
        if other == name or ("zoo", other_cls.kind) in cls.preset_loaders():
            continue
        with pytest.raises(RefusedSource, match=rf"{name}.from_preset cannot use .*: it is a zoo "
                                                rf"'{other_cls.kind}' preset\. It takes .*"
                                                rf"a zoo '{cls.kind}' preset"):
            cls.from_preset(other_cls.presets[preset])


def test_every_backbone_loads_from_task_and_body_presets(shipped, tmp_path):
    from zoo.image_classifier.backbone import ImageBackbone
    from zoo.image_classifier.image_classifier import save_backbone_preset as save_image_body
    from zoo.text_transformer.backbone import TextBackbone
    from zoo.text_transformer.bodies import save_backbone_preset as save_text_body

    def same_weights(a, b):
        assert len(a.weights) == len(b.weights)
        for x, y in zip(a.weights, b.weights):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))

    for backbone_cls, task, save_body in ((TextBackbone, "TextClassifier", save_text_body),
                                          (TextBackbone, "TextEncoder", save_text_body),
                                          (ImageBackbone, "ImageClassifier", save_image_body)):
        task_model = shipped[task]
        assert task_model.backbone_cls is backbone_cls
        backbone = backbone_cls.from_preset(TASKS[task][0])
        same_weights(backbone, task_model.backbone)
        folder = save_body(tmp_path / task, task_model.backbone, task_model.preprocessor)
        pinned = backbone_cls.from_preset(folder, sha256=metadata_sha256(folder))
        same_weights(pinned, task_model.backbone)
        assert backbone_cls.from_preset(folder, dropout=0.3).dropout == 0.3
    with pytest.raises(RefusedSource, match="TextBackbone.from_preset cannot use .*: it is a zoo "
                                            "'image_classifier' preset"):
        TextBackbone.from_preset(zoo.ImageClassifier.presets["mnist_vit_micro"])
    with pytest.raises(RefusedSource, match="ImageBackbone.from_preset cannot use .*: it is a "
                                            "zoo 'translator' preset"):
        ImageBackbone.from_preset(zoo.Translator.presets["gramps_en_de_small"])
