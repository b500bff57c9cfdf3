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
