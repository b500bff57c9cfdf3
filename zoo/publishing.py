"""Writing folders and files that readers (TF Serving, `from_preset`, a
resumed run) may look at while they are written, or after a crash.

Every write goes to a staging folder beside its target, named
`.<target>.<pid>.<random>` and created with the umask's modes (a TF Serving
process running as another user can read what is published); its files and
folders are fsynced, then it is renamed into place, and the parent folder is
fsynced after the rename. So a reader sees the old folder or the new one,
whole, and a crash leaves at most a staging folder, which the next write
into the same parent removes once the process that made it is gone.

- `new_version_directory`: TF Serving's `<folder>/<n>/`. A published version is
  never replaced: the next free number is claimed by the rename itself
  (a directory cannot be renamed onto a non-empty one), and a writer that
  loses the race to another takes the number after it.
- `replaced_directory`: a folder that each write replaces (`run/preset/`).
  The old one is renamed aside to `.<target>.previous`, the new one into
  place, the old one removed; a crash between the two renames leaves the
  previous folder, which `recover_replaced` (called by the next write and
  by readers) renames back.
- `write_text_atomic`: a file (`report.json`) by the same rename.
"""

import contextlib
import errno
import os
import secrets
import shutil
from pathlib import Path

# Exports racing for version numbers: each loss moves on to the next number.
MAX_VERSION_ATTEMPTS = 100


def _staging_path(target):
    target = Path(target)
    return target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}")


def _process_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_abandoned_staging(parent):
    """Removes staging folders and files under `parent` whose writer has
    exited without renaming them into place (a SIGKILL during an export)."""
    parent = Path(parent)
    if not parent.is_dir():
        return
    for path in parent.glob(".*.*.*"):
        _, pid, token = path.name.rsplit(".", 2)
        ours = pid.isdigit() and len(token) == 8 and all(c in "0123456789abcdef" for c in token)
        if ours and int(pid) != os.getpid() and not _process_alive(int(pid)):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


def _fsync(path):
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def fsync_tree(folder):
    """fsyncs every file and folder under `folder`, and `folder` itself."""
    for root, folders, files in os.walk(folder):
        for name in files:
            _fsync(os.path.join(root, name))
        for name in folders:
            _fsync(os.path.join(root, name))
    _fsync(folder)


@contextlib.contextmanager
def _staging_directory(target):
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned_staging(target.parent)
    staging = _staging_path(target)
    os.mkdir(staging)  # the umask's modes, where mkdtemp would give 0700
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def new_version_directory(folder, version=None):
    """Yields `(staging, publish)`: write into `staging`, then `publish()`
    renames it to `folder/<version>` and returns that path. `version=None`
    takes the next free number, and the one after it if another writer
    publishes first; a given `version` that exists is refused, before
    anything is written and again at the rename."""
    folder = Path(folder)
    if version is not None and (folder / str(int(version))).exists():
        raise _version_exists(folder / str(int(version)))
    with _staging_directory(folder / "version") as staging:
        def publish():
            fsync_tree(staging)
            number = next_version(folder) if version is None else int(version)
            for _ in range(MAX_VERSION_ATTEMPTS):
                target = folder / str(number)
                try:
                    if target.exists():
                        raise FileExistsError(errno.EEXIST, "exists", str(target))
                    os.rename(staging, target)
                except OSError as error:
                    if error.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                        raise
                    if version is not None:
                        raise _version_exists(target) from None
                    number = max(number + 1, next_version(folder))
                    continue
                _fsync(folder)
                return target
            raise OSError(f"{folder}: no free version number after "
                          f"{MAX_VERSION_ATTEMPTS} attempts")

        yield staging, publish


def _version_exists(target):
    return ValueError(f"{target} already exists; TF Serving versions are immutable.")


def next_version(folder):
    """One more than the largest integer-named folder in `folder`."""
    folder = Path(folder)
    versions = [int(p.name) for p in folder.glob("*") if p.is_dir() and p.name.isdigit()]
    return max(versions, default=0) + 1


def _previous(target):
    return target.with_name(f".{target.name}.previous")


def recover_replaced(target):
    """Puts back the folder a replacement renamed aside, when the process
    that replaced it died before renaming the new one into place."""
    target = Path(target)
    previous = _previous(target)
    if previous.is_dir() and not target.exists():
        with contextlib.suppress(FileNotFoundError, FileExistsError, OSError):
            os.rename(previous, target)


@contextlib.contextmanager
def replaced_directory(target):
    """Yields a staging folder that replaces `target` (when it exists) on
    success, and is removed on failure."""
    target = Path(target)
    recover_replaced(target)
    with _staging_directory(target) as staging:
        yield staging
        fsync_tree(staging)
        previous = _previous(target)
        shutil.rmtree(previous, ignore_errors=True)
        if target.exists():
            os.rename(target, previous)
        os.rename(staging, target)
        _fsync(target.parent)
        shutil.rmtree(previous, ignore_errors=True)


def write_text_atomic(path, text):
    """Writes `path` through a staging file renamed over it, fsynced."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = _staging_path(path)
    try:
        with open(staging, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(staging, path)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise
    _fsync(path.parent)
