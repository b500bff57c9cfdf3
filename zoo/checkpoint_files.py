"""Reading the files of a checkpoint (keras-hub preset or Hugging Face folder), with bounds.

What the text and image converters share: recognising hub handles, reading
a checkpoint's configuration and tokenizer files through keras-hub's file
access (which downloads `hf://` and `kaggle://` files once and reads local
folders in place) with a size bound, and unpacking a zipped checkpoint with
bounds on its members.
"""

import contextlib
import json
import shutil
import tempfile
import zipfile
from pathlib import Path

from zoo.keras_compat import preset_file, preset_file_exists

HUB_SCHEMES = ("hf://", "kaggle://", "modelscope://", "gs://")
# Bounds on a zipped checkpoint: what a BERT-base folder needs, with room.
MAX_ZIP_MEMBERS = 64
MAX_ZIP_BYTES = 2 << 30
MAX_ZIP_RATIO = 50
# The largest configuration or tokenizer file read (BERT's tokenizer.json is
# 0.5 MB, a 250k-token multilingual one about 20 MB).
MAX_TEXT_FILE_BYTES = 64 << 20


def is_hub_handle(preset):
    return isinstance(preset, str) and preset.startswith(HUB_SCHEMES)


def has_file(handle, name):
    return preset_file_exists(handle, name)


def read_text(handle, name):
    """A checkpoint's text file, at most `MAX_TEXT_FILE_BYTES`."""
    try:
        path = Path(preset_file(handle, name))
        size = path.stat().st_size
        if size > MAX_TEXT_FILE_BYTES:
            raise ValueError(f"{handle}/{name} holds {size} bytes, more than the "
                             f"{MAX_TEXT_FILE_BYTES} a configuration or vocabulary file may.")
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"{handle}/{name} cannot be read: {error}") from None


def read_json(handle, name, required=False):
    """A checkpoint's JSON file (None when absent and not `required`)."""
    if not has_file(handle, name):
        if required:
            raise ValueError(f"{handle} holds no {name}: expected a keras-hub preset or a "
                             "Hugging Face checkpoint folder.")
        return None
    try:
        return json.loads(read_text(handle, name))
    except json.JSONDecodeError as error:
        raise ValueError(f"{handle}/{name} is not valid JSON: {error}") from None


def checkpoint_format(handle):
    """`(config.json, whether it is a Hugging Face checkpoint)`; refuses a
    folder that is neither a keras-hub preset nor a Hugging Face checkpoint."""
    config = read_json(handle, "config.json", required=True)
    if not isinstance(config, dict) or not ("model_type" in config or "registered_name" in config):
        raise ValueError(f"{handle}/config.json is neither a keras-hub preset's (no "
                         "'registered_name') nor a Hugging Face checkpoint's (no 'model_type').")
    return config, "model_type" in config


def check_safetensors(handle):
    """Refuses a Hugging Face checkpoint without `model.safetensors`."""
    if not has_file(handle, "model.safetensors"):
        also = (" (it has pytorch_model.bin, which keras-hub does not read)"
                if has_file(handle, "pytorch_model.bin") else "")
        raise ValueError(f"{handle} holds no model.safetensors{also}.")


def hub_backbone(handle):
    """keras-hub's backbone of a checkpoint, its errors turned into one `ValueError`."""
    import keras_hub

    try:
        return keras_hub.models.Backbone.from_preset(str(handle))
    except (ImportError, FileNotFoundError, OSError, KeyError, TypeError, ValueError) as error:
        # TypeError: a config edited by hand that the class cannot take.
        raise ValueError(f"keras-hub cannot read the checkpoint {handle}: "
                         f"{type(error).__name__}: {error}") from None


@contextlib.contextmanager
def unzipped(archive):
    """Yields a temporary folder holding the checkpoint zipped in `archive`,
    unpacked with bounds on its members: no paths outside the folder, at
    most `MAX_ZIP_MEMBERS` files and `MAX_ZIP_BYTES` bytes, each compressed
    at most `MAX_ZIP_RATIO` to 1."""
    folder = Path(tempfile.mkdtemp(prefix="zoo-checkpoint-"))
    try:
        try:
            with zipfile.ZipFile(archive) as zipped:
                _check_members(zipped, archive)
                zipped.extractall(folder)
        except zipfile.BadZipFile as error:
            raise ValueError(f"{archive} is not a readable zip file: {error}") from None
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _check_members(zipped, archive):
    members = zipped.infolist()
    if len(members) > MAX_ZIP_MEMBERS:
        raise ValueError(f"{archive} holds {len(members)} files; a checkpoint holds at most "
                         f"{MAX_ZIP_MEMBERS}.")
    total = 0
    for member in members:
        path = Path(member.filename)
        if path.is_absolute() or ".." in path.parts:
            raise ValueError(f"{archive} holds {member.filename!r}, a path outside its folder.")
        if member.file_size > MAX_ZIP_RATIO * max(member.compress_size, 1 << 10):
            raise ValueError(f"{archive}: {member.filename} unpacks to {member.file_size} bytes "
                             f"from {member.compress_size}, more than {MAX_ZIP_RATIO} to 1.")
        total += member.file_size
    if total > MAX_ZIP_BYTES:
        raise ValueError(f"{archive} unpacks to {total} bytes, more than {MAX_ZIP_BYTES}.")
