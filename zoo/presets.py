"""Preset folders: config, weights and assets, verified by SHA-256 on load.

A preset folder holds:

    config.json        {"kind": ..., "config": {constructor arguments}}
    model.weights.h5   the weights
    assets/...         tokenizer vocabulary, label names, ...
    metadata.json      {"format_version", "kind", "files": {name: sha256}, ...}

Loading checks that every file named in `metadata.json` is there and has its
checksum before anything is built, so a missing, corrupt or mismatched file
gives a clear `ValueError`, never a half-loaded model. Writing goes to a
temporary folder beside the target that is renamed into place at the end.
"""

import contextlib
import contextvars
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from zoo.guarded_files import opened
from zoo.publishing import recover_replaced, replaced_directory

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.weights.h5"
METADATA_FILE = "metadata.json"
ASSETS_DIR = "assets"
# A vocabulary of a million 60-byte entries; what a hand-edited or hostile file may not exceed.
MAX_ASSET_BYTES = 64 << 20
PACKAGE_DIR = Path(__file__).resolve().parent
# The largest size a preset's configuration may give, checked before anything
# is built (one edited number must not make the build allocate 100 GB). Each
# is far above any model the zoo or the checkpoints it reads have: BERT-large
# has 24 layers of 1024, 30522 tokens and 512 positions.
CONFIG_MAXIMA = {
    "vocabulary_size": 1 << 20, "source_vocabulary_size": 1 << 20,
    "target_vocabulary_size": 1 << 20, "sequence_length": 1 << 16,
    "max_sequence_length": 1 << 16, "max_length": 1 << 16, "hidden_dim": 1 << 13,
    "intermediate_dim": 1 << 15, "num_layers": 128, "num_encoder_layers": 128,
    "num_decoder_layers": 128, "num_heads": 128, "num_classes": 1 << 16,
    "image_size": 4096, "patch_size": 4096, "channels": 4, "window_size": 1 << 16,
    "global_tokens": 1 << 10,
}
# The SHA-256 of each shipped preset's metadata.json, which lists the hash of
# every file of the preset: an edited shipped preset is refused even when its
# metadata was rewritten to match. A preset recipe that rewrites a shipped
# preset prints the new hash to put here (`tests/test_hostile_inputs.py`
# checks these against the files).
SHIPPED_METADATA_SHA256 = {
    "image_classifier/presets/mnist_vit_micro":
        "71035eb2be91326f8d215d8b0db2e1e21734d0b3f2bb958f13959d01c362ee47",
    "text_classifier/presets/rotten_tomatoes_small":
        "902f85703c260344545b5d4d064bfeb638fb077698e6dc2999d66c0ef054beea",
    "text_transformer/presets/english_body_small":
        "0ba3205a86ea7602d252c25a9593587796d88d2be6dbc015bfa47f1bd8dafd7e",
    "translator/presets/gramps_en_de_small":
        "76e4a9f33bdb03aec01478f53a8847cfdf066ecb9ee1e412181ae0435f989b42",
}


# The entries Keras's `get_config` adds to a model's own arguments.
KERAS_ARGUMENTS = ("name", "trainable", "dtype")


def preset_config(model):
    """What a preset's `config.json` keeps of `model` (a task or a
    backbone): its `get_config()` without Keras's own entries and without
    those its asset files hold (`file_arguments`, e.g. a classifier's labels)."""
    dropped = KERAS_ARGUMENTS + tuple(getattr(model, "file_arguments", ()))
    return {k: v for k, v in model.get_config().items() if k not in dropped}


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class Preset:
    """A verified preset: its configuration, and each file as verified.

    The small files (config, metadata, assets) are the bytes that were
    hashed, held in memory, and the weights a private copy written while
    they were hashed: a file swapped in the folder after verification is
    never read.
    """

    folder: Path
    kind: str
    config: dict
    metadata: dict
    texts: dict  # {listed name: verified bytes}, all but the weights
    weights: Path  # the verified private copy
    _private: object = None  # the TemporaryDirectory that holds `weights`

    def has_asset(self, name):
        return f"{ASSETS_DIR}/{name}" in self.texts

    def asset_text(self, name):
        listed = f"{ASSETS_DIR}/{name}"
        if listed not in self.texts:
            raise ValueError(f"{self.folder}: {METADATA_FILE} lists no {listed}.")
        try:
            return self.texts[listed].decode("utf-8")
        except UnicodeDecodeError as error:
            raise ValueError(f"{self.folder}/{listed} is not UTF-8 text: {error}") from None


def asset_lines(loaded, name):
    """The lines of a text asset (a vocabulary: one entry a line, each ended
    by "\\n", so an entry may hold any other line separator)."""
    return loaded.asset_text(name).split("\n")[:-1]


def save_preset(folder, kind, config, write_weights, assets, metadata=None):
    """Writes a preset folder atomically.

    Args:
        folder: the preset folder to create (replaced if it exists).
        kind: the model kind, e.g. `"text_classifier"`.
        config: JSON-serializable constructor arguments.
        write_weights: callable writing the weights to the path it is given.
        assets: `{file name: str contents}` written under `assets/`.
        metadata: extra JSON-serializable facts (training recipe, metrics).
    """
    with replaced_directory(folder) as staging:
        (staging / CONFIG_FILE).write_text(
            json.dumps({"kind": kind, "config": config}, indent=2, sort_keys=True)
        )
        write_weights(str(staging / WEIGHTS_FILE))
        (staging / ASSETS_DIR).mkdir()
        for name, contents in assets.items():
            (staging / ASSETS_DIR / name).write_text(contents, encoding="utf-8")
        files = sorted(
            str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file()
        )
        (staging / METADATA_FILE).write_text(json.dumps({
            "format_version": FORMAT_VERSION,
            "kind": kind,
            "files": {name: sha256(staging / name) for name in files},
            **(metadata or {}),
        }, indent=2, sort_keys=True))
    return Path(folder)


def save_backbone_preset(folder, kind, backbone, preprocessor, assets=None, metadata=None):
    """Writes a body, a backbone and its preprocessor without a task, as a
    checksummed preset of `kind` (what `python -m zoo convert` writes)."""
    config = {"backbone": preset_config(backbone), "preprocessor": preprocessor.get_config()}
    return save_preset(folder, kind, config, backbone.save_weights, assets=assets or {},
                       metadata=metadata)


def load_backbone_preset(folder, kind, backbone_class, preprocessor_from, weights_group=None):
    """`(backbone, preprocessor)` of a verified body preset of `kind`;
    `preprocessor_from(loaded)` builds the preprocessor from its config and
    assets. `weights_group`: the backbone's weights are that group of a
    task's weights file (a task preset read as a body, without its head)."""
    loaded = load_preset(folder, kind)
    try:
        backbone = backbone_class.from_config(loaded.config["backbone"])
        preprocessor = preprocessor_from(loaded)
    except (KeyError, TypeError) as error:
        raise ValueError(f"{folder}/{CONFIG_FILE} is not a {kind}'s configuration: "
                         f"{error}") from None
    load_checked_weights(backbone, loaded, weights_group)
    return backbone, preprocessor


def load_checked_weights(model, loaded, group=None, regroup=None):
    """Loads the verified preset `loaded`'s weights into `model`, after
    checking from the file's header alone (no weight read) that it stores
    exactly the shapes the model has: a weight declared 30000 x 30000 in a
    hand-edited file is refused before anything is allocated for it.

    `group`: only that group of the file is `model`'s (a task's backbone).
    `regroup`: `{path in the file: path in the model's layout}`, where an
    older layout's entries live now (`regrouped_weights`)."""
    import collections

    try:
        stored = stored_weight_shapes(loaded.weights, group)
    except ValueError as error:
        raise ValueError(f"{loaded.folder}/{WEIGHTS_FILE} {error}") from None
    expected = collections.Counter(tuple(w.shape) for w in model.weights)
    stored = collections.Counter(stored)
    if stored != expected:
        extra = sorted((stored - expected).elements())[:3]
        missing = sorted((expected - stored).elements())[:3]
        raise ValueError(
            f"{loaded.folder}/{WEIGHTS_FILE} does not match the preset's configuration: it "
            f"stores {sum(stored.values())} weights, the configured network has "
            f"{sum(expected.values())}; shapes only in the file: {extra}, only in the "
            f"network: {missing}.")
    try:
        if group is None and regroup is None:
            model.load_weights(str(loaded.weights))
        else:
            with regrouped_weights(loaded.weights, group, regroup) as path:
                model.load_weights(path)
    except Exception as error:  # keras raises several types here
        raise ValueError(f"{loaded.folder}/{WEIGHTS_FILE} does not match the preset's "
                         f"config: {error}") from None


@contextlib.contextmanager
def regrouped_weights(path, group=None, regroup=None):
    """The path of a temporary `.weights.h5` file holding `group` of the
    weights file `path` as its root (None: the whole file), with each entry
    `old` of `regroup` moved to `regroup[old]`."""
    import h5py

    with tempfile.TemporaryDirectory() as staging:
        target = str(Path(staging) / WEIGHTS_FILE)
        with h5py.File(path, "r") as source, h5py.File(target, "w") as copy:
            root = source[group] if group is not None else source
            for name in root:
                root.copy(root[name], copy, name)
            for old, new in (regroup or {}).items():
                if old in copy:
                    copy.require_group(new.rpartition("/")[0] or "/")
                    copy.move(old, new)
        yield target


def stored_weight_shapes(path, group=None):
    """The shape of every weight a Keras `.weights.h5` file stores (only
    under `group`, when given), read from its header alone (no weight is read)."""
    import h5py

    try:
        with h5py.File(path, "r") as weights_file:
            stored = []
            root = weights_file if group is None else weights_file.get(group)
            if not isinstance(root, h5py.Group):
                raise ValueError(f"holds no {group!r} weights")
            root.visititems(lambda name, item: stored.append(tuple(item.shape))
                            if isinstance(item, h5py.Dataset) else None)
    except OSError as error:
        raise ValueError(f"is not a weights file: {error}") from None
    return stored


def resolve(name_or_folder, shipped):
    """The folder of a shipped preset name, or a user's preset folder."""
    if isinstance(name_or_folder, str) and name_or_folder in shipped:
        return shipped[name_or_folder]
    folder = Path(name_or_folder)
    if folder.is_dir():
        return folder
    raise ValueError(
        f"Unknown preset {str(name_or_folder)!r}: it is neither a shipped "
        f"preset ({sorted(shipped)}) nor an existing preset folder."
    )


def _listed_path(folder, name):
    """`folder/name` for a name `metadata.json` lists, refused when it could
    lead outside the folder (absolute, `..`, a symlink on the way)."""
    parts = name.split("/")
    if (not isinstance(name, str) or not name or name.startswith("/") or "\\" in name
            or any(part in ("", ".", "..") for part in parts)):
        raise ValueError(f"{folder}: {METADATA_FILE} lists {name!r}; a preset lists relative "
                         "paths inside its folder, without '..'.")
    path = folder
    for part in parts:
        path = path / part
        if path.is_symlink():
            raise ValueError(f"{folder}: {name} is a symbolic link; a preset holds its files "
                             "themselves.")
    if not path.is_file():
        raise ValueError(f"{folder}: {name} is missing.")
    return path


def _unlisted(folder, listed):
    """Files, folders and links in `folder` that `metadata.json` does not
    account for: a preset holds nothing it does not list."""
    extra = []
    for root, folders, files in os.walk(folder):
        for name in folders + files:
            path = Path(root) / name
            relative = path.relative_to(folder).as_posix()
            if path.is_symlink():
                extra.append(relative + " (a symbolic link)")
            elif path.is_file() and relative not in listed and relative != METADATA_FILE:
                extra.append(relative)
    return sorted(extra)


def _read_bounded(path, limit, what):
    """At most `limit` bytes of the regular file `path`, through the guarded
    reader's `opened` (a FIFO or device swapped in is refused, not read)."""
    with opened(path.parent, path.name) as handle:
        data = handle.read(limit + 1)
        if len(data) > limit:
            size = os.fstat(handle.fileno()).st_size  # for the message: the bound is the read
            raise ValueError(f"{path} holds {max(size, len(data))} bytes, more than the {limit} "
                             f"{what} may.")
    return data


def load_preset(folder, kind):
    """Verifies a preset folder and returns its `Preset`.

    Every file the folder holds must be listed in `metadata.json` with its
    SHA-256, and match it; links, unlisted files and names leading outside
    the folder are refused. A shipped preset's `metadata.json` must also
    match the hash pinned in this package (`SHIPPED_METADATA_SHA256`); a
    user pins any preset the same way (`check_pinned`). Each file is used as
    it was verified (`Preset`).
    """
    folder = Path(folder)
    recover_replaced(folder)  # a replacement cut short by a crash
    metadata_path = folder / METADATA_FILE
    if metadata_path.is_symlink() or not metadata_path.is_file():
        raise ValueError(
            f"{folder} is not a preset folder: {METADATA_FILE} is missing."
        )
    metadata_bytes = _read_bounded(metadata_path, MAX_ASSET_BYTES, "a preset's metadata")
    shipped_pin = _shipped_pin(folder)
    digest = hashlib.sha256(metadata_bytes).hexdigest()
    if shipped_pin is not None and digest != shipped_pin:
        raise ValueError(f"{folder}: {METADATA_FILE} has SHA-256 {digest}, not the {shipped_pin} "
                         "pinned for this preset in the zoo package: the shipped preset was "
                         "edited.")
    user_pin = _USER_PINS.get().get(folder.resolve())
    if user_pin is not None and digest != user_pin:
        raise ValueError(f"{folder}: {METADATA_FILE} has SHA-256 {digest}, not the pinned "
                         f"{user_pin}: this is not the preset you pinned.")
    try:
        metadata = json.loads(metadata_bytes)
        files = metadata["files"]
        if not isinstance(files, dict):
            raise TypeError("'files' is not a mapping")
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as error:
        raise ValueError(f"{metadata_path} is corrupt: {error}") from None
    if metadata.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{folder}: preset format {metadata.get('format_version')!r}, "
            f"expected {FORMAT_VERSION}."
        )
    if metadata.get("kind") != kind:
        raise ValueError(
            f"{folder} is a {metadata.get('kind')!r} preset; expected a "
            f"{kind!r} preset."
        )
    for required in (CONFIG_FILE, WEIGHTS_FILE):
        if required not in files:
            raise ValueError(f"{folder}: {METADATA_FILE} does not list {required}.")
    paths = {name: _listed_path(folder, name) for name in files}
    extra = _unlisted(folder, files)
    if extra:
        raise ValueError(f"{folder} holds {', '.join(extra[:5])}, which {METADATA_FILE} does "
                         "not list; a preset holds only the files it lists and verifies.")
    texts, private = {}, tempfile.TemporaryDirectory(prefix="zoo-preset-")
    weights = Path(private.name) / WEIGHTS_FILE
    for name, expected in files.items():
        if name == WEIGHTS_FILE:
            actual = _copy_hashed(paths[name], weights)
        else:
            texts[name] = _read_bounded(paths[name], MAX_ASSET_BYTES, "a preset's text file")
            actual = hashlib.sha256(texts[name]).hexdigest()
        if actual != expected:
            raise ValueError(
                f"{folder}: {name} is corrupt or changed: its SHA-256 is "
                f"{actual}, the preset expects {expected}."
            )
    try:
        config = json.loads(texts[CONFIG_FILE])["config"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as error:
        raise ValueError(f"{folder}/{CONFIG_FILE} is corrupt: {error}") from None
    check_sizes(config, f"{folder}/{CONFIG_FILE}")
    return Preset(folder, kind, config, metadata, texts, weights, private)


# Folder -> the SHA-256 its metadata.json must have, while `pinned` holds.
_USER_PINS = contextvars.ContextVar("zoo_user_pins", default={})


@contextlib.contextmanager
def pinned(preset, sha256, shipped=None):
    """Within it, `load_preset` refuses the pinned preset (a shipped name or
    a folder) unless the `metadata.json` it reads, the bytes it then
    verifies every file against, has the SHA-256 `sha256`; checked on entry
    too (`check_pinned`), for an early error. Yields the folder."""
    folder = check_pinned(preset, sha256, shipped)
    token = _USER_PINS.set({**_USER_PINS.get(), folder.resolve(): str(sha256).lower()})
    try:
        yield folder
    finally:
        _USER_PINS.reset(token)


def check_pinned(preset, sha256, shipped=None):
    """Refuses `preset` (a shipped name or a folder) unless its
    `metadata.json`, which lists the hash of each of its files, has the
    SHA-256 `sha256`: a user pins a preset they received (`from_preset(...,
    sha256=...)`, `--preset-sha256`). Returns the folder."""
    folder = resolve(preset, shipped or {}) if not isinstance(preset, Path) else preset
    metadata_path = Path(folder) / METADATA_FILE if isinstance(folder, (str, Path)) else None
    if metadata_path is None or metadata_path.is_symlink() or not metadata_path.is_file():
        raise ValueError(f"sha256 pins a zoo preset folder, which {preset} is not (it has no "
                         f"{METADATA_FILE}); convert a checkpoint first (python -m zoo convert).")
    actual = hashlib.sha256(_read_bounded(metadata_path, MAX_ASSET_BYTES,
                                          "a preset's metadata")).hexdigest()
    if actual != str(sha256).lower():
        raise ValueError(f"{folder}: {METADATA_FILE} has SHA-256 {actual}, not the pinned "
                         f"{sha256}: this is not the preset you pinned.")
    return Path(folder)


def check_sizes(config, where, whose="a preset's"):
    """Refuses a size in `config` (nested dicts too) above `CONFIG_MAXIMA`."""
    for name, value in (config.items() if isinstance(config, dict) else ()):
        if isinstance(value, dict):
            check_sizes(value, where, whose)
            continue
        limit = CONFIG_MAXIMA.get(name)
        if limit is None or value is None:
            continue
        sizes = value if isinstance(value, (list, tuple)) else [value]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= limit
                   for v in sizes):
            raise ValueError(f"{where}: {name}={value!r}; {whose} {name} is a number from 0 "
                             f"to {limit}.")


def _copy_hashed(source, target):
    """Copies `source` to `target`, returning the SHA-256 of the bytes copied."""
    digest = hashlib.sha256()
    with open(source, "rb") as reading, open(target, "wb") as writing:
        for block in iter(lambda: reading.read(1 << 20), b""):
            digest.update(block)
            writing.write(block)
    return digest.hexdigest()


def _shipped_pin(folder):
    """The pinned metadata hash when `folder` is one of the package's own
    presets (an unknown folder there is refused), else None."""
    try:
        relative = folder.resolve().relative_to(PACKAGE_DIR).as_posix()
    except ValueError:
        return None
    if relative not in SHIPPED_METADATA_SHA256:
        raise ValueError(f"{folder} is inside the zoo package but is not one of its presets "
                         f"({sorted(SHIPPED_METADATA_SHA256)}).")
    return SHIPPED_METADATA_SHA256[relative]


@dataclass
class _AssetFolder:
    """A folder of asset files (a `.keras` file's), read as a `Preset`'s
    assets, each at most `MAX_ASSET_BYTES`."""

    folder: Path

    def has_asset(self, name):
        return (self.folder / name).is_file()

    def asset_text(self, name):
        path = self.folder / name
        try:
            return _read_bounded(path, MAX_ASSET_BYTES, "a vocabulary file").decode("utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise ValueError(f"{path} cannot be read: {error}") from None


def shipped_preset_folders():
    """The folder of every preset the zoo package ships (`SHIPPED_METADATA_SHA256`)."""
    return [PACKAGE_DIR / relative for relative in sorted(SHIPPED_METADATA_SHA256)]


def shipped_presets(folder):
    """`{name: folder}` of the preset folders under `folder`."""
    folder = Path(folder)
    if not folder.is_dir():
        return {}
    return {p.name: p for p in sorted(folder.iterdir()) if (p / METADATA_FILE).is_file()}
