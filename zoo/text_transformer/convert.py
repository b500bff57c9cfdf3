"""BERT-family checkpoints (keras-hub presets, Hugging Face folders) -> a zoo text body.

keras-hub reads the checkpoint (`keras_hub.models.Backbone.from_preset`,
which takes `kaggle://` and `hf://` handles and local folders, and reads a
Hugging Face folder through its own converters); this module maps the
weights of the keras-hub backbone it gets into a `TextBackbone` built from
keras_selfattn layers, and configures a `TextPreprocessor` from the
checkpoint's tokenizer files. There is no second weight parser here.

Mapping, per keras-hub backbone:

- `BertBackbone` (BERT, MiniLM, the BERT miniatures): post-norm blocks, an
  embedding layer norm, a pooler. The type-0 segment row is added to every
  position row (one segment: exact), so the zoo backbone has no type input.
- `DistilBertBackbone`: the same without segments or pooler.
- `RobertaBackbone`: as DistilBERT, with byte-level byte-pair tokens
  (`vocab.json` and `merges.txt`, or `tokenizer.json`) whose `<pad>` (id 1)
  moves to id 0, swapped with `<s>`. keras-hub drops the two positions
  RoBERTa reserves; its Hugging Face converter leaves out the type-0 row
  that RoBERTa adds to every embedding, which this module adds to the
  positions (read with keras-hub's `SafetensorLoader`).

`hidden_act` and `layer_norm_eps` come from a Hugging Face `config.json`
(MiniLM's `"gelu"` is the exact, erf GELU). keras-hub's `BertBackbone` itself
always computes the tanh approximation; a keras-hub preset is converted with
what keras-hub computes.
"""

import numpy as np

from zoo.checkpoint_files import (
    RefusedSource, check_number, checked_vocabulary, hub_backbone, vocabulary_in_order, vocabulary_lines,
)
from zoo.keras_compat import hub_encoder_sublayers, safetensor_loader
from zoo.text_transformer.backbone import TextBackbone
from zoo.text_transformer.preprocessor import TextPreprocessor

SUPPORTED = {"BertBackbone": "BERT", "DistilBertBackbone": "DistilBERT",
             "RobertaBackbone": "RoBERTa"}
HF_MODEL_TYPES = ("bert", "distilbert", "roberta")
# Hugging Face `hidden_act` -> `TextBackbone(activation=...)`.
HF_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_approximate",
                  "gelu_pytorch_tanh": "gelu_approximate", "relu": "relu"}
# Tokens of one text a converted preprocessor keeps unless the checkpoint says.
DEFAULT_SEQUENCE_LENGTH = 512


def load_checkpoint(checkpoint):
    """`(TextBackbone, TextPreprocessor)` of a checked keras-hub preset or
    Hugging Face checkpoint (`zoo.checkpoint_files.Checkpoint`).

    Raises:
        ValueError: naming what is missing or unsupported.
    """
    config, hugging_face = checkpoint.config, checkpoint.hugging_face
    if hugging_face:
        _check_hugging_face_files(checkpoint)
    hub = hub_backbone(checkpoint)
    architecture = type(hub).__name__
    if architecture not in SUPPORTED:
        raise RefusedSource(
            f"{checkpoint.origin} holds a {architecture} checkpoint; the zoo converts "
            f"{', '.join(SUPPORTED.values())} ({', '.join(SUPPORTED)}) into text models.")
    backbone_config, weights = _MAPPINGS[architecture](hub)
    if hugging_face:
        backbone_config.update(_hugging_face_settings(checkpoint))
        if config["model_type"] == "roberta":
            weights["position"] = weights["position"] + _roberta_type_row(checkpoint)
    vocabulary, tokenizer_config = (
        _hugging_face_tokenizer(checkpoint, config["model_type"]) if hugging_face
        else _keras_hub_tokenizer(checkpoint))
    vocabulary, weights["token"] = _padding_first(
        vocabulary, weights["token"], tokenizer_config["pad_token"], checkpoint.origin)
    sequence_length = min(backbone_config["sequence_length"], DEFAULT_SEQUENCE_LENGTH)
    if hugging_face:
        sentence_config = checkpoint.json("sentence_bert_config.json") or {}
        sequence_length = min(sequence_length, sentence_config.get("max_seq_length") or 10**9)
    backbone = TextBackbone(**backbone_config, dropout=0.1)
    _assign(backbone, weights, checkpoint.origin)
    return backbone, TextPreprocessor(vocabulary, sequence_length=sequence_length,
                                      **tokenizer_config)


def _check_hugging_face_files(checkpoint):
    model_type = checkpoint.config["model_type"]
    if model_type not in HF_MODEL_TYPES:
        raise RefusedSource(f"{checkpoint.origin} holds a Hugging Face {model_type!r} "
                            f"checkpoint; the zoo converts {', '.join(map(repr, HF_MODEL_TYPES))}.")
    files = ("vocab.json", "merges.txt") if model_type == "roberta" else ("vocab.txt",)
    if not (all(checkpoint.has(name) for name in files) or checkpoint.has("tokenizer.json")):
        raise RefusedSource(f"{checkpoint.origin} holds neither {' and '.join(files)} nor "
                            "tokenizer.json: the tokenizer's vocabulary is missing.")


def _hugging_face_settings(checkpoint):
    config = checkpoint.config
    activation = config.get("hidden_act") or config.get("activation", "gelu")
    if not isinstance(activation, str) or activation not in HF_ACTIVATIONS:
        raise RefusedSource(f"{checkpoint.where('config.json')}: hidden_act={activation!r} is "
                            f"not supported; expected one of {sorted(HF_ACTIVATIONS)}.")
    epsilon = check_number(config, "layer_norm_eps", checkpoint.where("config.json"),
                           default=1e-12)
    return {"activation": HF_ACTIVATIONS[activation], "layer_norm_epsilon": epsilon}


def _special_token(config, name, default):
    token = config.get(name, default)
    return token.get("content", default) if isinstance(token, dict) else (token or default)


def _roberta_type_row(checkpoint):
    with safetensor_loader(str(checkpoint.folder)) as loader:
        try:
            return np.asarray(loader.get_tensor("embeddings.token_type_embeddings.weight"))[0]
        except Exception:  # older RoBERTa checkpoints have no type embedding
            return 0.0


def _hugging_face_byte_pair(checkpoint, settings):
    if checkpoint.has("vocab.json"):
        vocabulary = vocabulary_in_order(checkpoint.json("vocab.json"),
                                         checkpoint.where("vocab.json"))
        text = checkpoint.text("merges.txt")
        merges = [line for line in text.splitlines() if line and not line.startswith("#version")]
    else:
        model = checkpoint.json("tokenizer.json")["model"]
        if model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
            raise RefusedSource(f"{checkpoint.where('tokenizer.json')} holds a "
                                f"{model.get('type')!r} tokenizer; a RoBERTa checkpoint needs "
                                "byte-pair (BPE) merges.")
        vocabulary = vocabulary_in_order(model["vocab"], checkpoint.where("tokenizer.json"))
        merges = model.get("merges", [])
        if not isinstance(merges, list) or not all(
                isinstance(m, str) or (isinstance(m, list) and all(isinstance(p, str) for p in m))
                for m in merges):
            raise RefusedSource(f"{checkpoint.where('tokenizer.json')}: the merges are not a "
                                "list of token pairs.")
        merges = [m if isinstance(m, str) else " ".join(m) for m in merges]
    return vocabulary, {
        "tokenizer": "byte_pair", "merges": merges,
        "pad_token": _special_token(settings, "pad_token", "<pad>"),
        "unknown_token": _special_token(settings, "unk_token", "<unk>"),
        "start_token": _special_token(settings, "cls_token", "<s>"),
        "end_token": _special_token(settings, "sep_token", "</s>"),
    }


def _hugging_face_tokenizer(checkpoint, model_type):
    """`(vocabulary, preprocessor settings)` from `vocab.txt`, `vocab.json` and
    `merges.txt`, or `tokenizer.json`, and `tokenizer_config.json` (their
    types checked by `zoo.checkpoint_files`)."""
    settings = checkpoint.json("tokenizer_config.json") or {}
    if model_type == "roberta":
        return _hugging_face_byte_pair(checkpoint, settings)
    normalizer = {}
    if checkpoint.has("vocab.txt"):
        vocabulary = vocabulary_lines(checkpoint, "vocab.txt")
    else:
        tokenizer = checkpoint.json("tokenizer.json")
        model = tokenizer["model"]
        if model.get("type") != "WordPiece" or not isinstance(model.get("vocab"), dict):
            raise RefusedSource(f"{checkpoint.where('tokenizer.json')} holds a "
                                f"{model.get('type')!r} tokenizer; the zoo reads WordPiece "
                                "vocabularies.")
        vocabulary = vocabulary_in_order(model["vocab"], checkpoint.where("tokenizer.json"))
        normalizer = tokenizer.get("normalizer") or {}
    lowercase = settings.get("do_lower_case", normalizer.get("lowercase", True))
    strip_accents = settings.get("strip_accents", normalizer.get("strip_accents"))
    return vocabulary, {
        "lowercase": bool(lowercase), "strip_accents": strip_accents,
        "pad_token": _special_token(settings, "pad_token", "[PAD]"),
        "unknown_token": _special_token(settings, "unk_token", "[UNK]"),
        "start_token": _special_token(settings, "cls_token", "[CLS]"),
        "end_token": _special_token(settings, "sep_token", "[SEP]"),
    }


def _keras_hub_tokenizer(checkpoint):
    import keras_hub

    try:
        tokenizer = keras_hub.models.Tokenizer.from_preset(str(checkpoint.folder))
    except (FileNotFoundError, OSError, KeyError, TypeError, ValueError) as error:
        raise RefusedSource(f"keras-hub cannot read the tokenizer of {checkpoint.origin}: "
                            f"{error}") from None
    if isinstance(tokenizer, keras_hub.tokenizers.BytePairTokenizer):
        vocabulary = vocabulary_in_order(tokenizer.vocabulary,
                                         f"{checkpoint.origin} (its tokenizer)")
        unknown = "<unk>" if "<unk>" in vocabulary else tokenizer.pad_token
        return vocabulary, {
            "tokenizer": "byte_pair", "merges": list(tokenizer.merges),
            "pad_token": tokenizer.pad_token, "unknown_token": unknown,
            "start_token": tokenizer.start_token, "end_token": tokenizer.end_token,
        }
    vocabulary = checked_vocabulary(list(tokenizer.get_vocabulary()),
                                    f"{checkpoint.origin} (its tokenizer)")
    return vocabulary, {
        "lowercase": tokenizer.lowercase, "strip_accents": tokenizer.strip_accents,
        "pad_token": tokenizer.pad_token, "unknown_token": tokenizer.oov_token,
        "start_token": tokenizer.cls_token, "end_token": tokenizer.sep_token,
    }


def _padding_first(vocabulary, token_embeddings, pad_token, origin):
    """The vocabulary and embedding rows with the padding token moved to id
    0 (the backbone masks id 0), swapped with what was there."""
    if pad_token not in vocabulary:
        raise RefusedSource(f"{origin}: the vocabulary has no padding token {pad_token!r}.")
    if len(vocabulary) > len(token_embeddings):
        raise RefusedSource(f"{origin}: the vocabulary has {len(vocabulary)} tokens but the "
                            f"weights embed only {len(token_embeddings)}.")
    pad = vocabulary.index(pad_token)
    if pad == 0:
        return vocabulary, token_embeddings
    vocabulary, token_embeddings = list(vocabulary), np.array(token_embeddings)
    vocabulary[0], vocabulary[pad] = vocabulary[pad], vocabulary[0]
    token_embeddings[[0, pad]] = token_embeddings[[pad, 0]]
    return vocabulary, token_embeddings


def _encoder_weights(hub_backbone):
    """Per block: `{zoo TransformerEncoderBlock sublayer: weights}` from a
    keras-hub `TransformerEncoder` (both attentions have the weights of
    `keras.layers.MultiHeadAttention`)."""
    return [{name: sublayer.get_weights() for name, sublayer in hub_encoder_sublayers(layer).items()}
            for layer in hub_backbone.transformer_layers]


def _shared_config(hub_backbone, sequence_length):
    return dict(vocabulary_size=hub_backbone.vocabulary_size, num_layers=hub_backbone.num_layers,
                num_heads=hub_backbone.num_heads, hidden_dim=hub_backbone.hidden_dim,
                intermediate_dim=hub_backbone.intermediate_dim,
                sequence_length=sequence_length, embedding_norm=True,
                layer_norm_epsilon=1e-12)


def _bert(hub_backbone):
    positions = np.asarray(hub_backbone.position_embedding.position_embeddings)
    segments = np.asarray(hub_backbone.segment_embedding.embeddings)
    config = {**_shared_config(hub_backbone, len(positions)),
              "activation": "gelu_approximate", "pooler": True}
    return config, {
        "token": np.asarray(hub_backbone.token_embedding.embeddings),
        "position": positions + segments[0],
        "embedding_norm": hub_backbone.embeddings_layer_norm.get_weights(),
        "blocks": _encoder_weights(hub_backbone),
        "pooler": hub_backbone.pooled_dense.get_weights(),
    }


def _distil_bert(hub_backbone):
    embedding = hub_backbone.embeddings
    positions = np.asarray(embedding.position_embedding.position_embeddings)
    config = {**_shared_config(hub_backbone, len(positions)), "activation": "gelu"}
    return config, {
        "token": np.asarray(embedding.token_embedding.embeddings),
        "position": positions,
        "embedding_norm": hub_backbone.embeddings_layer_norm.get_weights(),
        "blocks": _encoder_weights(hub_backbone),
    }


def _roberta(hub_backbone):
    embedding = hub_backbone.embeddings
    positions = np.asarray(embedding.position_embedding.position_embeddings)
    config = {**_shared_config(hub_backbone, len(positions)), "activation": "gelu",
              "layer_norm_epsilon": 1e-5}
    return config, {
        "token": np.asarray(embedding.token_embedding.embeddings),
        "position": positions,
        "embedding_norm": hub_backbone.embeddings_layer_norm.get_weights(),
        "blocks": _encoder_weights(hub_backbone),
    }


_MAPPINGS = {"BertBackbone": _bert, "DistilBertBackbone": _distil_bert,
             "RobertaBackbone": _roberta}


def _assign(backbone, weights, handle):
    pairs = [(backbone.token_embeddings, weights["token"]),
             (backbone.position_embeddings, weights["position"])]
    pairs += zip(backbone.embedding_normalization.weights, weights["embedding_norm"])
    for block, sublayers in zip(backbone.blocks, weights["blocks"]):
        for name, values in sublayers.items():
            pairs += zip(getattr(block, name).weights, values)
    if backbone.pooler is not None:
        pairs += zip(backbone.pooler.weights, weights["pooler"])
    for variable, value in pairs:
        if tuple(variable.shape) != np.shape(value):
            raise RefusedSource(f"{handle}: cannot map a weight of shape {np.shape(value)} into "
                             f"{variable.path} {tuple(variable.shape)}.")
        variable.assign(value)
