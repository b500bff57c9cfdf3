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
import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.weights.h5"
METADATA_FILE = "metadata.json"
ASSETS_DIR = "assets"
# A vocabulary of a million 60-byte entries; what a hand-edited or hostile file may not exceed.
MAX_ASSET_BYTES = 64 << 20


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_directory(target):
    """Yields a temporary folder that replaces `target` only on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield staging
        previous = None
        if target.exists():
            previous = target.with_name(f".{target.name}.previous")
            shutil.rmtree(previous, ignore_errors=True)
            target.rename(previous)
        staging.rename(target)
        if previous is not None:
            shutil.rmtree(previous, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


@dataclass
class Preset:
    """A verified preset folder."""

    folder: Path
    kind: str
    config: dict
    metadata: dict

    @property
    def weights(self):
        return self.folder / WEIGHTS_FILE

    def asset(self, name):
        return self.folder / ASSETS_DIR / name


def asset_lines(loaded, name):
    """The lines of a text asset (a vocabulary: one entry a line, each ended
    by "\\n", so an entry may hold any other line separator), at most
    `MAX_ASSET_BYTES`: a preset's assets or a `.keras` file's."""
    path = loaded.asset(name)
    try:
        size = path.stat().st_size
        if size > MAX_ASSET_BYTES:
            raise ValueError(f"{path} holds {size} bytes, more than the {MAX_ASSET_BYTES} a "
                             "vocabulary file may.")
        return path.read_text(encoding="utf-8").split("\n")[:-1]
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} cannot be read: {error}") from None


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
    with atomic_directory(folder) as staging:
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
    config = {"backbone": backbone.architecture(), "preprocessor": preprocessor.get_config()}
    return save_preset(folder, kind, config, backbone.save_weights, assets=assets or {},
                       metadata=metadata)


def load_backbone_preset(folder, kind, backbone_class, preprocessor_from):
    """`(backbone, preprocessor)` of a verified body preset of `kind`;
    `preprocessor_from(loaded)` builds the preprocessor from its config and assets."""
    loaded = load_preset(folder, kind)
    try:
        backbone = backbone_class.from_config(loaded.config["backbone"])
        preprocessor = preprocessor_from(loaded)
    except (KeyError, TypeError) as error:
        raise ValueError(f"{folder}/{CONFIG_FILE} is not a {kind}'s configuration: "
                         f"{error}") from None
    try:
        backbone.load_weights(str(loaded.weights))
    except Exception as error:  # keras raises several types here
        raise ValueError(f"{loaded.weights} does not match the preset's config: {error}") from None
    return backbone, preprocessor


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


def preset_kind(folder):
    """The kind a preset folder's metadata names, or None when it has none."""
    try:
        return json.loads((Path(folder) / METADATA_FILE).read_text()).get("kind")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None


def load_preset(folder, kind):
    """Verifies a preset folder and returns its `Preset`."""
    folder = Path(folder)
    metadata_path = folder / METADATA_FILE
    if not metadata_path.is_file():
        raise ValueError(
            f"{folder} is not a preset folder: {METADATA_FILE} is missing."
        )
    try:
        metadata = json.loads(metadata_path.read_text())
        files = metadata["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
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
    for name, expected in files.items():
        path = folder / name
        if not path.is_file():
            raise ValueError(f"{folder}: {name} is missing.")
        actual = sha256(path)
        if actual != expected:
            raise ValueError(
                f"{folder}: {name} is corrupt or changed: its SHA-256 is "
                f"{actual}, the preset expects {expected}."
            )
    config = json.loads((folder / CONFIG_FILE).read_text())
    return Preset(folder, kind, config["config"], metadata)


@dataclass
class _AssetFolder:
    """A folder of asset files, read as a `Preset`'s assets."""

    folder: Path

    def asset(self, name):
        return self.folder / name


class _ShippedPresets:
    """`Model.presets`: `{name: folder}` of the presets shipped for that model."""

    def __get__(self, instance, owner):
        return shipped_presets(owner.presets_dir) if owner.presets_dir else {}


def shipped_presets(folder):
    """`{name: folder}` of the preset folders under `folder`."""
    folder = Path(folder)
    if not folder.is_dir():
        return {}
    return {p.name: p for p in sorted(folder.iterdir()) if (p / METADATA_FILE).is_file()}


class PresetModel:
    """What every zoo model shares for presets: `from_preset`, `save_to_preset`
    and the list of shipped ones.

    A subclass sets `kind` (stored in the preset) and `presets_dir`, and
    implements `architecture()`; it may store constructor arguments as
    assets (vocabularies) through `preset_assets()`, `write_assets()` and
    `assets_from_preset()`.
    """

    kind = None
    presets_dir = None
    presets = _ShippedPresets()
    # Configuration entries that may differ from a preset's when loading it.
    adjustable_at_load = ("dropout",)

    def architecture(self):
        """The constructor arguments that define the network (JSON-able)."""
        raise NotImplementedError

    def preset_assets(self):
        """`{constructor argument: value}` stored as preset assets, not config."""
        return {}

    def _set_untracked(self, **attributes):
        # Tokenizers and vocabularies hold no weights and are replaced when a
        # vocabulary is learned after the network is built, which Keras's
        # state tracking forbids; the export modules track tokenizers
        # explicitly instead.
        for name, value in attributes.items():
            object.__setattr__(self, name, value)

    def write_assets(self):
        """`{file name: text}` written under the preset's `assets/`."""
        return {}

    @classmethod
    def assets_from_preset(cls, loaded):
        """Constructor arguments read back from a verified preset's assets."""
        return {}

    def use_assets(self, **assets):
        """Takes the constructor arguments `assets_from_preset` reads (a
        vocabulary) into a model built without them: `.keras` loading."""

    def constructor_arguments(self):
        """Everything that rebuilds this model: architecture and assets."""
        return {**self.architecture(), **self.preset_assets()}

    # Keras's `.keras` format: the architecture in the config, the assets
    # (vocabularies) as files beside the weights, as keras-hub's tokenizers
    # keep theirs.

    def get_config(self):
        return {**super().get_config(), **self.architecture()}

    def save_assets(self, dir_path):
        if any(value is None for value in self.preset_assets().values()):
            return  # nothing learned yet
        for name, contents in self.write_assets().items():
            (Path(dir_path) / name).write_text(contents, encoding="utf-8")

    def load_assets(self, dir_path):
        folder = Path(dir_path)
        if any(folder.iterdir()):
            self.use_assets(**self.assets_from_preset(_AssetFolder(folder)))

    def save_to_preset(self, folder, metadata=None):
        """Writes config, weights and assets, checksummed, atomically."""
        # An uncompiled twin writes the network's weights without the
        # optimizer's slots, which would triple the file.
        twin = type(self)(**self.constructor_arguments())
        twin.set_weights(self.get_weights())
        return save_preset(
            folder, self.kind, self.architecture(), twin.save_weights,
            assets=self.write_assets(), metadata=metadata,
        )

    @classmethod
    def load_verified_preset(cls, preset):
        """The verified `Preset` for a shipped name or a folder."""
        return load_preset(resolve(preset, cls.presets), cls.kind)

    @classmethod
    def check_overrides(cls, config, overrides):
        unknown = set(overrides) - set(config)
        if unknown:
            raise ValueError(
                f"Unknown arguments {sorted(unknown)} for a {cls.kind} preset; "
                f"it is configured by {sorted(config)}."
            )
        changed = {
            k for k in overrides
            if k not in cls.adjustable_at_load and overrides[k] != config[k]
        }
        if changed:
            raise ValueError(
                f"Cannot change {sorted(changed)} of a pretrained preset: they "
                f"shape its weights. Only {list(cls.adjustable_at_load)} may differ."
            )

    @classmethod
    def with_preset_weights(cls, loaded, **arguments):
        """`cls(**arguments)` with the weights of the verified preset `loaded`."""
        model = cls(**arguments)
        try:
            model.load_weights(str(loaded.weights))
        except Exception as error:  # keras raises several types here
            raise ValueError(
                f"{loaded.weights} does not match the preset's config: {error}"
            ) from None
        return model

    @classmethod
    def from_preset(cls, preset, **overrides):
        """Loads a shipped preset by name, or a preset folder.

        `overrides` may change the entries in `adjustable_at_load`; sizes
        that shape weights cannot change.
        """
        loaded = cls.load_verified_preset(preset)
        cls.check_overrides(loaded.config, overrides)
        return cls.with_preset_weights(
            loaded, **{**loaded.config, **overrides, **cls.assets_from_preset(loaded)}
        )
