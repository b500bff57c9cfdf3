"""The one guarded reader of files that come from outside the zoo.

Every checkpoint file (a Hugging Face folder or cache snapshot, a keras-hub
preset, a packaged checkpoint's zip) is read through `read_bytes`, and a
folder is used only through `private_copy`, which copies the files a loader
may read into a private folder that keras-hub then reads: a file swapped in
the user's folder after it was checked is never read.

- Only regular files: a device, FIFO or socket is refused before it is
  opened for reading (and the opened descriptor is checked again).
- A symlink is followed only where it resolves inside the folder itself, or
  into the `blobs/` of the same repository of a Hugging Face cache
  (`models--org--name/snapshots/<rev>/file -> ../../blobs/<hash>`).
- Bytes are bounded by what is read (at most the bound plus one byte),
  never by `stat`, so `/dev/zero` or a file that grows cannot get past.
- JSON is bounded in nesting depth before it is parsed, and its top level
  must be an object.

Every refusal is a `RefusedSource` (a `ValueError`), naming the file and
what was expected; the command line prints it as one `error:` line.
"""

import contextlib
import json
import os
import re
import shutil
import stat
import tempfile
import zipfile
from pathlib import Path

import numpy as np

# The largest configuration or tokenizer file read (BERT's tokenizer.json is
# 0.5 MB, a 250k-token multilingual one about 20 MB).
MAX_TEXT_FILE_BYTES = 64 << 20
# The largest weights file (BERT-large in float32 is 1.34 GB, ViT-large 1.2 GB).
MAX_WEIGHTS_BYTES = 4 << 30
# Configuration and tokenizer files nest 5-6 levels; 10^5 levels would
# exhaust Python's recursion in the parser.
MAX_JSON_DEPTH = 64
# Files a folder of assets (a keras-hub preset's `assets/`) may hold.
MAX_TREE_FILES = 64
# Bounds on a zipped checkpoint: what a BERT-base folder needs, with room.
MAX_ZIP_MEMBERS = 64
MAX_ZIP_BYTES = 2 << 30
MAX_ZIP_RATIO = 50
_CHUNK = 1 << 20
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)


class RefusedSource(ValueError):
    """A file, folder or handle the zoo will not read, with what it expected."""


def _not_regular(path, mode):
    return RefusedSource(f"{path} is {_kind_of(mode)}; a checkpoint holds regular files.")


def _kind_of(mode):
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISDIR, "a folder")):
        if test(mode):
            return name
    return "not a regular file"


def allowed_roots(folder):
    """The folders a link in `folder` may resolve into: the folder itself,
    and for a Hugging Face cache snapshot its repository's `blobs/`."""
    folder = Path(os.path.realpath(folder))
    roots = [folder]
    if folder.parent.name == "snapshots":
        roots.append(folder.parent.parent / "blobs")
    return roots


def _inside(path, root):
    return path == root or root in path.parents


def checked_path(folder, name):
    """The real path of `folder/name`, refused unless it is a regular file
    that lies in the folder (or its cache's blobs, through a link)."""
    parts = Path(name).parts
    if not parts or Path(name).is_absolute() or ".." in parts:
        raise RefusedSource(f"{folder}: {name!r} is not a file name inside the folder.")
    path = Path(folder) / name
    try:
        os.lstat(path)
    except OSError as error:
        raise RefusedSource(f"{path} cannot be read: {error.strerror}.") from None
    real = Path(os.path.realpath(path))
    roots = allowed_roots(folder)
    if not any(_inside(real, root) for root in roots):
        raise RefusedSource(
            f"{path} is a symbolic link to {real}, outside the checkpoint folder: a link may "
            f"lead only inside {roots[0]}" + (f" or {roots[1]}" if len(roots) > 1 else "") + ".")
    try:
        mode = os.stat(real).st_mode
    except OSError as error:
        raise RefusedSource(f"{path} cannot be read: {error.strerror}.") from None
    if not stat.S_ISREG(mode):
        raise _not_regular(path, mode)
    return real


@contextlib.contextmanager
def opened(folder, name):
    """A binary file object of a checked `folder/name`, checked again once
    opened (non-blocking, so a FIFO swapped in meanwhile cannot hang)."""
    real = checked_path(folder, name)
    try:
        descriptor = os.open(real, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError as error:
        raise RefusedSource(f"{Path(folder) / name} cannot be read: {error.strerror}.") from None
    mode = os.fstat(descriptor).st_mode
    if not stat.S_ISREG(mode):
        os.close(descriptor)
        raise _not_regular(Path(folder) / name, mode)
    os.set_blocking(descriptor, True)
    with os.fdopen(descriptor, "rb") as handle:
        yield handle


def _too_large(folder, name, limit):
    return RefusedSource(f"{Path(folder) / name} holds more than {limit} bytes, the most a "
                         f"{_what(name)} may.")


def _what(name):
    return "weights file" if _is_weights(name) else "configuration or tokenizer file"


def _is_weights(name):
    return str(name).endswith((".safetensors", ".h5"))


def read_bytes(folder, name, limit=MAX_TEXT_FILE_BYTES):
    """The bytes of `folder/name`, at most `limit` (see the module docstring)."""
    with opened(folder, name) as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise _too_large(folder, name, limit)
    return data


def copy_file(folder, name, target, limit):
    """Copies `folder/name` to `target`, at most `limit` bytes."""
    copied = 0
    with opened(folder, name) as reading, open(target, "wb") as writing:
        for block in iter(lambda: reading.read(_CHUNK), b""):
            copied += len(block)
            if copied > limit:
                raise _too_large(folder, name, limit)
            writing.write(block)


def exists(folder, name):
    """Whether `folder/name` is there at all (a link, even a broken one, counts:
    reading it then says why it is refused)."""
    return os.path.lexists(Path(folder) / name)


def json_depth(data):
    """The nesting depth of the JSON text `data` (bytes), strings left out."""
    brackets = np.frombuffer(_STRING.sub(b'""', data), np.uint8)
    steps = (np.isin(brackets, (ord("["), ord("{"))).astype(np.int64)
             - np.isin(brackets, (ord("]"), ord("}"))))
    return int(np.cumsum(steps).max(initial=0))


def parse_json(data, where):
    """The JSON object of `data`, nesting at most `MAX_JSON_DEPTH`."""
    depth = json_depth(data)
    if depth > MAX_JSON_DEPTH:
        raise RefusedSource(f"{where} nests {depth} levels deep; at most {MAX_JSON_DEPTH} are "
                            "read.")
    try:
        value = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
        raise RefusedSource(f"{where} is not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise RefusedSource(f"{where} holds a JSON {type(value).__name__}; expected a JSON "
                            "object.")
    return value


def read_json(folder, name, required=False, where=None):
    """The JSON object of `folder/name` (None when absent and not `required`);
    `where` names the file in messages (default: its path)."""
    where = where or f"{Path(folder) / name}"
    if not exists(folder, name):
        if required:
            raise RefusedSource(f"{where} is missing.")
        return None
    return parse_json(read_bytes(folder, name), where)


def read_text(folder, name, where=None):
    """The UTF-8 text of `folder/name`, refused when it holds a NUL; `where`
    names the file in messages (default: its path)."""
    where = where or f"{Path(folder) / name}"
    data = read_bytes(folder, name)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise RefusedSource(f"{where} is not UTF-8 text: {error}") from None
    if "\0" in text:
        raise RefusedSource(f"{where} holds a NUL character; expected text.")
    return text


def _tree_files(folder, tree):
    """The regular files under `folder/tree` (relative names), links checked."""
    root = Path(folder) / tree
    if not exists(folder, tree):
        return []
    real = Path(os.path.realpath(root))
    if not any(_inside(real, allowed) for allowed in allowed_roots(folder)) or not real.is_dir():
        raise RefusedSource(f"{root} is not a folder inside the checkpoint folder.")
    names = []
    for current, folders, files in os.walk(root):
        for entry in folders + files:
            path = Path(current) / entry
            if path.is_symlink() or not path.is_dir():
                names.append(path.relative_to(folder).as_posix())
        if len(names) > MAX_TREE_FILES:
            raise RefusedSource(f"{root} holds more than {MAX_TREE_FILES} files.")
    return names


@contextlib.contextmanager
def private_copy(folder, names, trees=()):
    """A private folder holding the `names` of `folder` that are there, and
    every file under each of `trees`, each copied through the checks above
    (weights up to `MAX_WEIGHTS_BYTES`, other files `MAX_TEXT_FILE_BYTES`).
    Yields the private folder; it is removed on exit."""
    private = Path(tempfile.mkdtemp(prefix="zoo-source-"))
    try:
        wanted = [name for name in names if exists(folder, name)]
        for tree in trees:
            wanted += _tree_files(folder, tree)
        for name in wanted:
            target = private / name
            target.parent.mkdir(parents=True, exist_ok=True)
            copy_file(folder, name, target,
                      MAX_WEIGHTS_BYTES if _is_weights(name) else MAX_TEXT_FILE_BYTES)
        yield private
    finally:
        shutil.rmtree(private, ignore_errors=True)


@contextlib.contextmanager
def unzipped(archive):
    """Yields a temporary folder holding the checkpoint zipped in `archive`,
    unpacked with bounds on its members: no paths outside the folder, at
    most `MAX_ZIP_MEMBERS` files and `MAX_ZIP_BYTES` bytes, each compressed
    at most `MAX_ZIP_RATIO` to 1, each member's bytes counted as written."""
    folder = Path(tempfile.mkdtemp(prefix="zoo-checkpoint-"))
    try:
        try:
            with zipfile.ZipFile(archive) as zipped:
                _check_members(zipped, archive)
                _extract(zipped, folder, archive)
        except zipfile.BadZipFile as error:
            raise RefusedSource(f"{archive} is not a readable zip file: {error}") from None
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _extract(zipped, folder, archive):
    total = 0
    for member in zipped.infolist():
        target = folder / member.filename
        if member.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        written = 0
        with zipped.open(member) as reading, open(target, "wb") as writing:
            for block in iter(lambda: reading.read(_CHUNK), b""):
                written += len(block)
                total += len(block)
                if written > member.file_size or total > MAX_ZIP_BYTES:
                    raise RefusedSource(f"{archive}: {member.filename} unpacks to more bytes "
                                        "than it declares.")
                writing.write(block)


def _check_members(zipped, archive):
    members = zipped.infolist()
    if len(members) > MAX_ZIP_MEMBERS:
        raise RefusedSource(f"{archive} holds {len(members)} files; a checkpoint holds at most "
                            f"{MAX_ZIP_MEMBERS}.")
    total = 0
    for member in members:
        path = Path(member.filename)
        if path.is_absolute() or ".." in path.parts:
            raise RefusedSource(f"{archive} holds {member.filename!r}, a path outside its "
                                "folder.")
        if member.file_size > MAX_ZIP_RATIO * max(member.compress_size, 1 << 10):
            raise RefusedSource(f"{archive}: {member.filename} unpacks to {member.file_size} "
                                f"bytes from {member.compress_size}, more than {MAX_ZIP_RATIO} "
                                "to 1.")
        total += member.file_size
    if total > MAX_ZIP_BYTES:
        raise RefusedSource(f"{archive} unpacks to {total} bytes, more than {MAX_ZIP_BYTES}.")

