"""Versioned SavedModel export that TF Serving loads.

TF Serving watches a model folder for integer-named version subfolders; an
export writes `folder/<next version>/` through a temporary folder that is
renamed into place only when the SavedModel is complete, so a failed export
leaves nothing half-written and a watching server never sees a partial one.
"""

from pathlib import Path

import tensorflow as tf

from zoo.presets import atomic_directory


def next_version(folder):
    folder = Path(folder)
    versions = [int(p.name) for p in folder.glob("*") if p.is_dir() and p.name.isdigit()]
    return max(versions, default=0) + 1


def export_saved_model(module, folder, signatures, version=None):
    """Saves `module` with `signatures` as `folder/<version>/`.

    Args:
        module: a `tf.Module` that tracks every variable and resource the
            signatures use.
        folder: the model folder (created if needed).
        signatures: `{name: concrete function}`.
        version: integer version; defaults to one more than the largest present.

    Returns:
        The path of the written version.
    """
    version = next_version(folder) if version is None else int(version)
    target = Path(folder) / str(version)
    if target.exists():
        raise ValueError(f"{target} already exists; TF Serving versions are immutable.")
    with atomic_directory(target) as staging:
        tf.saved_model.save(module, str(staging), signatures=signatures)
    return target
