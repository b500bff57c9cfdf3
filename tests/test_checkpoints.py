"""Real checkpoints as zoo models: MiniLM from its pip package, keras-hub presets,
Hugging Face folders; numerics against keras-hub and a float64 NumPy BERT."""

import json
import math
import shutil
import unicodedata
import zipfile

import numpy as np
import pytest


from checkpoint_fixtures import hub_inputs, write_hugging_face_folder

keras_hub = pytest.importorskip("keras_hub")

# Accents, CJK, emoji, punctuation, empty and over-long texts.
TEXTS = [
    "A warm, funny and beautifully acted film.",
    "Héllo wörld: naïve café, déjà vu!",
    "你好，世界 and 東京",
    "What a ride 🙂🎬!!!",
    "Don't, can't -- won't... (really?) [yes] {no} $5 @home #1",
    "",
    " ".join(["unbelievably"] * 400),
]


def with_activation(backbone, activation):
    from zoo.text_transformer.backbone import TextBackbone

    other = TextBackbone(**{**backbone.get_config(), "activation": activation})
    other.set_weights(backbone.get_weights())
    return other


def test_minilm_backbone_equals_keras_hub_on_the_same_checkpoint(minilm, minilm_folder):
    backbone, preprocessor = minilm
    assert backbone.count_params() == 22_713_216 - 2 * 384  # keras-hub's, less the type rows
    hub = keras_hub.models.Backbone.from_preset(str(minilm_folder))
    ids = preprocessor(TEXTS[:5]).numpy()
    valid = ids != 0
    expected = hub(hub_inputs(ids))
    # keras-hub's BertBackbone computes tanh-GELU whatever the checkpoint says.
    ours = with_activation(backbone, "gelu_approximate")(ids)
    difference = np.abs(ours["sequence_output"].numpy() - expected["sequence_output"].numpy())
    assert difference[valid].max() < 1e-4
    np.testing.assert_allclose(ours["pooled_output"], expected["pooled_output"], atol=1e-4)


def numpy_bert(tensors, ids, config, position_offset=0, padding_id=0):
    """BERT's (or RoBERTa's, whose positions start at `position_offset` 2)
    forward pass in float64 NumPy from the Hugging Face tensors."""
    t = {k.removeprefix("bert.").removeprefix("roberta."): np.asarray(v, "float64")
         for k, v in tensors.items()}
    eps = config["layer_norm_eps"]

    def norm(x, prefix):
        mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mean) / np.sqrt(var + eps) * t[prefix + ".weight"] + t[prefix + ".bias"]

    def dense(x, prefix):
        return x @ t[prefix + ".weight"].T + t[prefix + ".bias"]

    gelu = np.vectorize(lambda v: 0.5 * v * (1 + math.erf(v / math.sqrt(2))))
    heads = config["num_attention_heads"]
    length = ids.shape[1]
    positions = t["embeddings.position_embeddings.weight"][position_offset:position_offset + length]
    x = (t["embeddings.word_embeddings.weight"][ids] + positions
         + t["embeddings.token_type_embeddings.weight"][0])
    x = norm(x, "embeddings.LayerNorm")
    allowed = (ids != padding_id)[:, None, None, :]
    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{i}"

        def split(y):
            return y.reshape(*y.shape[:2], heads, -1).transpose(0, 2, 1, 3)

        q, k, v = (split(dense(x, f"{p}.attention.self.{n}")) for n in ("query", "key", "value"))
        logits = np.where(allowed, q @ k.transpose(0, 1, 3, 2) / np.sqrt(q.shape[-1]), -np.inf)
        weights = np.exp(logits - logits.max(-1, keepdims=True))
        weights /= weights.sum(-1, keepdims=True)
        context = (weights @ v).transpose(0, 2, 1, 3).reshape(x.shape)
        x = norm(x + dense(context, f"{p}.attention.output.dense"), f"{p}.attention.output.LayerNorm")
        hidden = gelu(dense(x, f"{p}.intermediate.dense"))
        x = norm(x + dense(hidden, f"{p}.output.dense"), f"{p}.output.LayerNorm")
    return x


def test_minilm_backbone_equals_a_float64_numpy_bert_with_the_checkpoints_gelu(minilm, minilm_folder):
    from safetensors.numpy import load_file

    backbone, preprocessor = minilm
    config = json.loads((minilm_folder / "config.json").read_text())
    assert backbone.activation == "gelu" and backbone.layer_norm_epsilon == 1e-12
    ids = preprocessor(TEXTS[:4]).numpy()
    expected = numpy_bert(load_file(minilm_folder / "model.safetensors"), ids, config)
    ours = backbone(ids)["sequence_output"].numpy()
    valid = ids != 0
    assert np.abs(ours - expected)[valid].max() < 1e-4


@pytest.mark.parametrize("model_type", ["bert", "roberta"])
def test_hugging_face_folders_equal_a_float64_numpy_reference(model_type, rng, tmp_path):
    from zoo.text_transformer import bodies

    tensors, config = write_hugging_face_folder(tmp_path / model_type, model_type, rng)
    backbone, preprocessor = bodies.load_body(tmp_path / model_type)
    texts = ["a good film", "dull", ""] if model_type == "bert" else ["a quick fox", "fox a", ""]
    ids = preprocessor(texts).numpy()
    valid = ids != 0
    checkpoint_ids = ids
    if model_type == "roberta":  # back to the checkpoint's ids: <pad> 1, <s> 0
        checkpoint_ids = np.where(ids == 0, 1, np.where(ids == 1, 0, ids))
    roberta = model_type == "roberta"
    expected = numpy_bert(tensors, checkpoint_ids, config, position_offset=2 if roberta else 0,
                          padding_id=1 if roberta else 0)
    ours = backbone(ids)["sequence_output"].numpy()
    assert np.abs(ours - expected)[valid].max() < 1e-4
    if roberta:
        # keras-hub's own RoBERTa converter leaves out the type-0 row (upstream defect).
        hub = keras_hub.models.Backbone.from_preset(str(tmp_path / model_type))
        theirs = np.asarray(hub({"token_ids": checkpoint_ids, "padding_mask": valid.astype("int32")}))
        assert np.abs(theirs - expected)[valid].max() > 1e-2


def strip_accents(text):
    return "".join(c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn")


def test_tokenization_equals_keras_hubs_tokenizer(minilm, minilm_folder, tmp_path):
    _, preprocessor = minilm
    assert preprocessor.vocabulary.index("[CLS]") == 101  # found by name, not by place
    # keras-hub's BERT tokenizer reads vocab.txt; this checkpoint ships tokenizer.json only.
    folder = tmp_path / "with_vocab"
    folder.mkdir()
    for path in minilm_folder.iterdir():
        (folder / path.name).symlink_to(path)
    vocab = json.loads((folder / "tokenizer.json").read_text())["model"]["vocab"]
    (folder / "vocab.txt").write_text("\n".join(sorted(vocab, key=vocab.get)) + "\n")
    hub = keras_hub.models.Tokenizer.from_preset(str(folder))
    ours = preprocessor(TEXTS).numpy()
    length = preprocessor.sequence_length
    for row, text in zip(ours, TEXTS):
        # BERT's uncased tokenizer strips accents; keras-hub's BertTokenizer
        # lowercases without stripping them (so "héllo" is [UNK] there).
        pieces = list(np.asarray(hub(strip_accents(text))))[:length - 2]
        assert list(row[row != 0]) == [101, *pieces, 102], text
    assert ours.shape[1] == length  # the over-long text is cut to sequence_length
    accented = list(np.asarray(hub("déjà")))
    assert accented == [100] and list(ours[1][1:2]) != [100]


@pytest.mark.parametrize("name", ["bert", "distil_bert", "roberta"])
def test_keras_hub_presets_convert_to_equal_zoo_backbones(hub_presets, name):
    from zoo.text_transformer import bodies

    folder, hub = hub_presets[name]
    backbone, preprocessor = bodies.load_body(folder)
    texts = (["a quick fox", "a fox", "quick quick fox a"] if name == "roberta"
             else ["The good film !", "a dull movie", "plots"])
    ids = preprocessor(texts).numpy()
    inputs = hub_inputs(ids)
    if name == "roberta":
        # <pad> moved to id 0, swapped with <s>: keras-hub sees its own ids.
        assert preprocessor.vocabulary[:2] == ["<pad>", "<s>"]
        hub_ids = np.where(ids == 0, 1, np.where(ids == 1, 0, ids))
        hub_tokenizer = keras_hub.models.Tokenizer.from_preset(str(folder))
        for ours, theirs, text in zip(ids, hub_ids, texts):
            assert list(theirs[ours != 0]) == [0, *np.asarray(hub_tokenizer(text)), 2], text
        inputs = {"token_ids": hub_ids, "padding_mask": (ids != 0).astype("int32")}
    if name == "distil_bert":
        inputs.pop("segment_ids")
    expected = hub(inputs)
    expected = np.asarray(expected["sequence_output"] if isinstance(expected, dict) else expected)
    ours = backbone(ids)["sequence_output"].numpy()
    assert np.abs(ours - expected)[ids != 0].max() < 1e-4
    assert ("pooled_output" in backbone(ids)) == (name == "bert")


def test_unsupported_and_incomplete_checkpoints_are_refused(hub_presets, minilm_folder, tmp_path):
    from zoo import TextClassifier
    from zoo import guarded_files
    from zoo.text_transformer import bodies

    def refused(folder, message):
        with pytest.raises(ValueError, match=message):
            TextClassifier.from_preset(folder, labels=["a", "b"])

    gpt = tmp_path / "gpt"
    gpt.mkdir()
    (gpt / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    refused(gpt, "cannot use .*gpt: it is a Hugging Face 'gpt2' checkpoint. It takes .*"
                 "a Hugging Face 'bert' checkpoint")
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    shutil.copy(minilm_folder / "config.json", no_weights)
    (no_weights / "pytorch_model.bin").write_bytes(b"0")
    refused(no_weights, "no model.safetensors .it has pytorch_model.bin")
    no_vocabulary = tmp_path / "no_vocabulary"
    no_vocabulary.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(minilm_folder / name, no_vocabulary)
    refused(no_vocabulary, "neither vocab.txt nor tokenizer.json")
    refused(tmp_path / "nowhere", "Unknown preset")
    oversized = tmp_path / "oversized"
    oversized.mkdir()
    with open(oversized / "config.json", "wb") as handle:
        handle.truncate(guarded_files.MAX_TEXT_FILE_BYTES + 1)  # sparse: no disk used
    refused(oversized, "config.json holds more than 67108864 bytes")
    (oversized / "config.json").write_text('{"model_type": "bert", ')
    refused(oversized, "config.json is not valid JSON")
    refused(tmp_path, "holds no config.json")
    # A keras-hub preset of an architecture the zoo does not map, and one edited by hand.
    keras_hub.models.GPT2Backbone(vocabulary_size=16, num_layers=1, num_heads=2, hidden_dim=8,
                                  intermediate_dim=16, sequence_length=8
                                  ).save_to_preset(str(tmp_path / "gpt2"))
    refused(tmp_path / "gpt2", "it is a keras-hub GPT2Backbone preset. It takes")
    edited = tmp_path / "edited"
    shutil.copytree(hub_presets["bert"][0], edited)
    config = json.loads((edited / "config.json").read_text())
    config["registered_name"] = "keras_hub>AlbertBackbone"
    (edited / "config.json").write_text(json.dumps(config))
    refused(edited, "it is a keras-hub AlbertBackbone preset. It takes")
    # Zips: a path outside the folder, a decompression bomb, no zip at all.
    for members, message in (({"../evil.txt": b"x"}, "a path outside its folder"),
                             ({"config.json": b"0" * (1 << 22)}, "more than 50 to 1")):
        archive = tmp_path / "bad.zip"
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zipped:
            for member, data in members.items():
                zipped.writestr(member, data)
        with pytest.raises(ValueError, match=message), guarded_files.unzipped(archive):
            pass
    (tmp_path / "bad.zip").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable zip file"), \
            guarded_files.unzipped(tmp_path / "bad.zip"):
        pass
    assert "all_minilm_l6_v2" in bodies.named_bodies()
