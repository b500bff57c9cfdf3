"""A checkpoint from outside (Hugging Face folder, keras-hub preset), checked before anything is built.

`open_checkpoint(folder)` copies the files a loader may read into a private
folder through the guarded reader (`zoo.guarded_files`), then checks what it
copied before any network is built:

- `config.json`: its format (Hugging Face's `model_type` or keras-hub's
  `registered_name`), its sizes against the zoo's preset maxima
  (`zoo.presets.CONFIG_MAXIMA`), heads that divide the width, a finite
  layer-norm epsilon;
- the weights: `model.safetensors`'s header (every tensor's dtype, shape and
  byte range inside the file) or `model.weights.h5`'s datasets, holding at
  least the weights the configuration describes, so a configuration edited
  to describe a far larger network is refused before it is allocated;
- the tokenizer files: the types and keys each must have, and a vocabulary
  without NUL, duplicates or emptiness.

Only the files named here are ever copied: a `pytorch_model.bin` (a pickle)
or an `auto_map`'s code beside them is never read. The converters
(`zoo/text_transformer/convert.py`, `zoo/image_classifier/convert.py`) read
the `Checkpoint` it yields, and keras-hub reads its private folder.
"""

import contextlib
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path

from zoo.guarded_files import (
    RefusedSource, exists, parse_json, private_copy, read_json, read_text,
)
from zoo.presets import CONFIG_MAXIMA, stored_weight_shapes

HUB_SCHEMES = ("hf://", "kaggle://", "modelscope://", "gs://")
# What a loader may read of a Hugging Face folder (weights in safetensors only).
HUGGING_FACE_FILES = (
    "config.json", "model.safetensors", "vocab.txt", "vocab.json", "merges.txt",
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "sentence_bert_config.json", "preprocessor_config.json",
)
# What keras-hub reads of its own preset folders.
KERAS_HUB_FILES = (
    "config.json", "metadata.json", "model.weights.h5", "tokenizer.json", "preprocessor.json",
    "image_converter.json", "task.json",
)
KERAS_HUB_TREES = ("assets",)
# Hugging Face size names -> the zoo's, per model type (DistilBERT's
# `hidden_dim` is its feed-forward width).
HUGGING_FACE_SIZES = {
    "bert": {"num_hidden_layers": "num_layers", "hidden_size": "hidden_dim",
             "num_attention_heads": "num_heads", "intermediate_size": "intermediate_dim",
             "vocab_size": "vocabulary_size", "max_position_embeddings": "sequence_length"},
    "distilbert": {"n_layers": "num_layers", "dim": "hidden_dim", "n_heads": "num_heads",
                   "hidden_dim": "intermediate_dim", "vocab_size": "vocabulary_size",
                   "max_position_embeddings": "sequence_length"},
    "vit": {"num_hidden_layers": "num_layers", "hidden_size": "hidden_dim",
            "num_attention_heads": "num_heads", "intermediate_size": "intermediate_dim",
            "image_size": "image_size", "patch_size": "patch_size"},
}
HUGGING_FACE_SIZES["roberta"] = HUGGING_FACE_SIZES["bert"]
# keras-hub backbone config names -> the zoo's maxima.
KERAS_HUB_SIZES = {"num_layers": "num_layers", "hidden_dim": "hidden_dim",
                   "num_heads": "num_heads", "intermediate_dim": "intermediate_dim",
                   "mlp_dim": "intermediate_dim", "vocabulary_size": "vocabulary_size",
                   "max_sequence_length": "sequence_length", "image_shape": "image_size",
                   "patch_size": "patch_size"}
SAFETENSORS_ITEM_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4,
                          "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1,
                          "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
MAX_SAFETENSORS_HEADER_BYTES = 100 << 20


def is_hub_handle(preset):
    return isinstance(preset, str) and preset.startswith(HUB_SCHEMES)


@dataclass(frozen=True)
class Checkpoint:
    """A checked private copy of a checkpoint: `folder` is the copy, `origin`
    what the user gave (named in every message), `config` its config.json,
    `format` `"hugging_face"` or `"keras_hub"`."""

    folder: Path
    origin: str
    config: dict
    format: str
    # Each file is read and parsed once: the checks and the converter share it.
    _read: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def hugging_face(self):
        return self.format == "hugging_face"

    def has(self, name):
        return exists(self.folder, name)

    def json(self, name, required=False):
        if ("json", name) not in self._read:
            self._read["json", name] = read_json(self.folder, name, required=required,
                                                 where=self.where(name))
        return self._read["json", name]

    def text(self, name):
        if ("text", name) not in self._read:
            self._read["text", name] = read_text(self.folder, name, where=self.where(name))
        return self._read["text", name]

    def where(self, name):
        return f"{self.origin}/{name}"


def checkpoint_format(config, origin):
    """`"hugging_face"` or `"keras_hub"` from a config.json's keys."""
    if "model_type" in config:
        if not isinstance(config["model_type"], str):
            raise RefusedSource(f"{origin}/config.json: model_type={config['model_type']!r}; "
                                "expected a string such as 'bert'.")
        return "hugging_face"
    if isinstance(config.get("registered_name"), str):
        return "keras_hub"
    raise RefusedSource(f"{origin}/config.json is neither a keras-hub preset's (no "
                        "'registered_name') nor a Hugging Face checkpoint's (no 'model_type').")


def keras_hub_class(config):
    """The class a keras-hub preset's config names (`keras_hub>BertBackbone` -> BertBackbone)."""
    return str(config.get("registered_name", "")).split(">")[-1]


def read_config(folder, origin):
    """The config.json of a checkpoint folder, through the guarded reader."""
    if not exists(folder, "config.json"):
        raise RefusedSource(f"{origin} holds no config.json: expected a keras-hub preset or a "
                            "Hugging Face checkpoint folder.")
    return read_json(folder, "config.json", where=f"{origin}/config.json")


@contextlib.contextmanager
def open_checkpoint(folder, origin=None):
    """Yields the `Checkpoint` of a Hugging Face or keras-hub folder: its
    files copied privately through the guarded reader and checked (see the
    module docstring)."""
    origin = str(origin or folder)
    config = read_config(folder, origin)
    form = checkpoint_format(config, origin)
    names, trees = ((HUGGING_FACE_FILES, ()) if form == "hugging_face"
                    else (KERAS_HUB_FILES, KERAS_HUB_TREES))
    with private_copy(folder, names, trees) as private:
        checkpoint = Checkpoint(private, origin, read_config(private, origin), form)
        if checkpoint.config != config:
            raise RefusedSource(f"{origin}/config.json changed while it was read.")
        if checkpoint.hugging_face:
            _check_hugging_face(checkpoint)
        else:
            _check_keras_hub(checkpoint)
        yield checkpoint


def check_size(value, name, zoo_name, where):
    """A positive integer at most the zoo's maximum for `zoo_name` (each of a list)."""
    limit = CONFIG_MAXIMA[zoo_name]
    values = value if isinstance(value, (list, tuple)) else [value]
    if not values or not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= limit
                             for v in values):
        raise RefusedSource(f"{where}: {name}={value!r}; expected a whole number from 1 to "
                            f"{limit} (the zoo's maximum for {zoo_name}).")
    return values[0]


def _checked_sizes(config, names, where, required):
    sizes = {}
    for name, zoo_name in names.items():
        if name not in config:
            if name in required:
                raise RefusedSource(f"{where} has no {name!r}; a checkpoint's configuration "
                                    "gives its sizes.")
            continue
        sizes[zoo_name] = check_size(config[name], name, zoo_name, where)
    heads, width = sizes.get("num_heads"), sizes.get("hidden_dim")
    if heads and width and width % heads:
        raise RefusedSource(f"{where}: {width} wide with {heads} heads; the heads must divide "
                            "the width.")
    return sizes


def check_number(config, name, where, low=0.0, high=1.0, default=None):
    """A finite number in `(low, high)` (absent: `default`)."""
    value = config.get(name, default)
    if value is None:
        return None
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not math.isfinite(value) or not low < value < high):
        raise RefusedSource(f"{where}: {name}={value!r}; expected a finite number between "
                            f"{low} and {high}.")
    return float(value)


def _check_hugging_face(checkpoint):
    config, where = checkpoint.config, checkpoint.where("config.json")
    names = HUGGING_FACE_SIZES.get(config["model_type"], {})
    sizes = _checked_sizes(config, names, where, required=tuple(
        n for n, z in names.items() if z in ("num_layers", "hidden_dim", "num_heads")))
    check_number(config, "layer_norm_eps", where)
    if not checkpoint.has("model.safetensors"):
        origin = Path(checkpoint.origin)  # the user's folder (never copied: a pickle)
        also = (" (it has pytorch_model.bin, a pickle the zoo never reads)"
                if origin.is_dir() and exists(origin, "pytorch_model.bin") else "")
        raise RefusedSource(f"{checkpoint.origin} holds no model.safetensors{also}.")
    stored = safetensors_elements(checkpoint.folder / "model.safetensors",
                                  checkpoint.where("model.safetensors"))
    _check_enough_weights(sizes, stored, checkpoint.origin, "model.safetensors")
    _check_tokenizer_files(checkpoint)


def _check_keras_hub(checkpoint):
    where = checkpoint.where("config.json")
    inner = checkpoint.config.get("config")
    if not isinstance(inner, dict):
        raise RefusedSource(f"{where} has no 'config' object; a keras-hub preset's config.json "
                            "holds the backbone's arguments there.")
    sizes = _checked_sizes(inner, KERAS_HUB_SIZES, where, required=())
    if checkpoint.has("model.weights.h5"):
        try:
            shapes = stored_weight_shapes(checkpoint.folder / "model.weights.h5")
        except ValueError:
            raise RefusedSource(f"{checkpoint.where('model.weights.h5')} is not a Keras weights "
                                "file.") from None
        _check_enough_weights(sizes, sum(math.prod(s) for s in shapes), checkpoint.origin,
                              "model.weights.h5")
    for name in ("tokenizer.json", "preprocessor.json", "image_converter.json", "metadata.json"):
        if checkpoint.has(name):
            checkpoint.json(name)


def _check_enough_weights(sizes, stored, origin, weights_name):
    """Refuses a configuration describing far more weights than are stored:
    blocks of `4 d^2 + 2 d i` weights and a `V x d` embedding at least."""
    width = sizes.get("hidden_dim", 0)
    needed = sizes.get("num_layers", 0) * (4 * width * width
                                           + 2 * width * sizes.get("intermediate_dim", 0))
    needed += sizes.get("vocabulary_size", 0) * width
    if needed > stored:
        raise RefusedSource(
            f"{origin}/config.json describes a network of at least {needed:,} weights "
            f"({sizes}), but {weights_name} stores {stored:,}: the configuration does not "
            "belong to these weights.")


def safetensors_elements(path, where):
    """The number of values a safetensors file stores, after checking its
    header: every tensor's dtype known, shape whole numbers, bytes inside
    the file and of the size the shape says, the file no longer than they."""
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise RefusedSource(f"{where} is not a safetensors file: it is shorter than its "
                                "8-byte header length.")
        (length,) = struct.unpack("<Q", prefix)
        if length > MAX_SAFETENSORS_HEADER_BYTES:
            raise RefusedSource(f"{where} declares a {length}-byte header; at most "
                                f"{MAX_SAFETENSORS_HEADER_BYTES} are read.")
        header_bytes = handle.read(length)
        handle.seek(0, 2)
        data_bytes = handle.tell() - 8 - length
    if len(header_bytes) < length:
        raise RefusedSource(f"{where} is cut short: its header declares {length} bytes, the "
                            f"file holds {len(header_bytes)} after the length.")
    header = parse_json(header_bytes, f"{where} (its header)")
    elements = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        shape = entry.get("shape") if isinstance(entry, dict) else None
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        dtype = entry.get("dtype") if isinstance(entry, dict) else None
        if (dtype not in SAFETENSORS_ITEM_BYTES or not isinstance(shape, list)
                or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                           for s in shape)
                or not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)):
            raise RefusedSource(f"{where}: tensor {name!r} is described as {entry!r}; expected "
                                "a dtype, a shape of whole numbers and two byte offsets.")
        begin, end = offsets
        count = math.prod(shape)
        if not 0 <= begin <= end or end - begin != count * SAFETENSORS_ITEM_BYTES[dtype]:
            raise RefusedSource(f"{where}: tensor {name!r} of shape {shape} ({dtype}) spans "
                                f"bytes {begin}-{end}, which do not hold it.")
        if end > data_bytes:
            raise RefusedSource(f"{where} is cut short: tensor {name!r} ends at byte {end} of "
                                f"the data, which holds {data_bytes}.")
        elements += count
    return elements


def _check_tokenizer_files(checkpoint):
    """Types and keys of the tokenizer files a text checkpoint has; its
    vocabulary read and checked by `vocabulary_lines` / `vocabulary_in_order`."""
    settings = checkpoint.json("tokenizer_config.json") or {}
    for name in ("do_lower_case",):
        if name in settings and not isinstance(settings[name], bool):
            raise RefusedSource(f"{checkpoint.where('tokenizer_config.json')}: "
                                f"{name}={settings[name]!r}; expected true or false.")
    if settings.get("strip_accents") not in (None, True, False):
        raise RefusedSource(f"{checkpoint.where('tokenizer_config.json')}: strip_accents="
                            f"{settings['strip_accents']!r}; expected true, false or null.")
    for name in ("pad_token", "unk_token", "cls_token", "sep_token", "mask_token"):
        token = settings.get(name)
        content = token.get("content") if isinstance(token, dict) else token
        if token is not None and not isinstance(content, str):
            raise RefusedSource(f"{checkpoint.where('tokenizer_config.json')}: {name}="
                                f"{token!r}; expected a token string.")
    sentence = checkpoint.json("sentence_bert_config.json") or {}
    if "max_seq_length" in sentence and sentence["max_seq_length"] is not None:
        check_size(sentence["max_seq_length"], "max_seq_length", "sequence_length",
                   checkpoint.where("sentence_bert_config.json"))
    # Read and checked before anything is built; the converter reuses them.
    if checkpoint.has("merges.txt"):
        checkpoint.text("merges.txt")
    if checkpoint.has("vocab.txt"):
        vocabulary_lines(checkpoint, "vocab.txt")
    if checkpoint.has("vocab.json"):
        vocabulary_in_order(checkpoint.json("vocab.json"), checkpoint.where("vocab.json"))
    tokenizer = checkpoint.json("tokenizer.json")
    if tokenizer is not None:
        model = tokenizer.get("model")
        if not isinstance(model, dict) or not isinstance(model.get("type"), str):
            raise RefusedSource(f"{checkpoint.where('tokenizer.json')} has no 'model' object "
                                "with a 'type': expected a Hugging Face tokenizers file.")
        normalizer = tokenizer.get("normalizer")
        if normalizer is not None and not isinstance(normalizer, dict):
            raise RefusedSource(f"{checkpoint.where('tokenizer.json')}: 'normalizer' is a "
                                f"{type(normalizer).__name__}; expected an object or null.")


def vocabulary_lines(checkpoint, name):
    """The tokens of a one-token-a-line vocabulary file, checked."""
    tokens = checkpoint.text(name).splitlines()
    return checked_vocabulary(tokens, checkpoint.where(name))


def vocabulary_in_order(mapping, where):
    """A `{token: id}` map -> the tokens in id order, ids 0..n-1, checked."""
    if not isinstance(mapping, dict) or not all(
            isinstance(token, str) and isinstance(i, int) and not isinstance(i, bool)
            for token, i in mapping.items()):
        raise RefusedSource(f"{where}: the vocabulary is not a map of tokens to whole-number "
                            "ids.")
    ids = sorted(mapping.items(), key=lambda item: item[1])
    if [i for _, i in ids] != list(range(len(ids))):
        raise RefusedSource(f"{where}: the vocabulary ids are not 0..{len(ids) - 1}.")
    return checked_vocabulary([token for token, _ in ids], where)


def checked_vocabulary(tokens, where):
    """Refuses an empty vocabulary, a token holding NUL, and duplicates."""
    if not tokens:
        raise RefusedSource(f"{where}: the vocabulary is empty.")
    for number, token in enumerate(tokens):
        if "\0" in token:
            raise RefusedSource(f"{where}: token {number} holds a NUL character.")
    if len(set(tokens)) != len(tokens):
        seen, duplicate = set(), None
        for token in tokens:
            if token in seen:
                duplicate = token
                break
            seen.add(token)
        raise RefusedSource(f"{where}: the token {duplicate!r} appears more than once; a "
                            "vocabulary gives each token one id.")
    return tokens


def hub_backbone(checkpoint):
    """keras-hub's backbone of a checked checkpoint, its errors turned into one `RefusedSource`."""
    import keras_hub

    try:
        return keras_hub.models.Backbone.from_preset(str(checkpoint.folder))
    except (ImportError, FileNotFoundError, OSError, KeyError, TypeError, ValueError) as error:
        # TypeError: a config edited by hand that the class cannot take.
        message = str(error).replace(str(checkpoint.folder), checkpoint.origin)
        raise RefusedSource(f"keras-hub cannot read the checkpoint {checkpoint.origin}: "
                            f"{type(error).__name__}: {message}") from None

