"""Versioned SavedModel export that TF Serving loads.

TF Serving watches a model folder for integer-named version subfolders; an
export writes `folder/<next version>/` through a temporary folder that is
renamed into place only when the SavedModel is complete, so a failed export
leaves nothing half-written and a watching server never sees a partial one.
"""

from pathlib import Path

import tensorflow as tf

from zoo.publishing import new_version_directory


def export_saved_model(module, folder, signatures, version=None):
    """Saves `module` with `signatures` as `folder/<version>/`.

    Args:
        module: a `tf.Module` that tracks every variable and resource the
            signatures use.
        folder: the model folder (created if needed).
        signatures: `{name: concrete function}`.
        version: integer version; defaults to the next free number (one
            more than the largest present, or after it when another export
            publishes that one first). A published version is never replaced.

    Returns:
        The path of the written version.
    """
    if Path(folder).exists() and not Path(folder).is_dir():
        raise ValueError(f"{folder} is a file; an export goes into a model folder of numbered "
                         "versions.")
    if version is not None and (Path(folder) / str(int(version))).exists():
        raise ValueError(f"{Path(folder) / str(int(version))} already exists; TF Serving "
                         "versions are immutable.")
    with new_version_directory(folder, version) as (staging, publish):
        tf.saved_model.save(module, str(staging), signatures=signatures)
        return publish()
