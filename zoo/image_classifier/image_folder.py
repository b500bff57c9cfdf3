"""Reading a folder of labelled images (`class_name/*.png`), each checked to decode."""

import warnings
from pathlib import Path

from zoo.image_classifier.preprocessor import decode_bounded

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


def read_image_folder(path):
    """Reads a folder laid out as `class_name/*.png|jpg|jpeg|bmp|gif`.

    Defined behaviour for awkward folders:
    - a missing or empty folder, or one without images, raises `ValueError`;
    - files with other suffixes are ignored, and so are files directly in
      the folder (not in a class folder);
    - files with an image suffix that do not decode as an image (not an
      image, truncated, corrupt) are skipped, with a warning that counts
      them; the training report counts them too;
    - images of different sizes and channel counts are all fine: the model
      converts and resizes each.

    Returns:
        `(images, labels, skipped)`: the encoded bytes of each image, its
        class folder's name, and the paths of the skipped files.
    """
    import tensorflow as tf


    root = Path(path)
    if not root.is_dir():
        raise ValueError(f"No such image folder: {root}")
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    images, labels, skipped = [], [], []
    for folder in classes:
        for file in sorted(folder.rglob("*")):
            if not file.is_file() or file.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            data = file.read_bytes()
            try:
                decode_bounded(data)
            except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError):
                skipped.append(str(file))
                continue
            images.append(data)
            labels.append(folder.name)
    if skipped:
        shown = ", ".join(skipped[:5])
        warnings.warn(
            f"{root}: skipped {len(skipped)} file(s) that are not readable images "
            f"({shown}{', ...' if len(skipped) > 5 else ''}).",
            stacklevel=2,
        )
    if not images:
        found = [p.name for p in classes]
        raise ValueError(
            f"{root} holds no readable images: expected class folders "
            f"(found {found[:10]}) holding {'/'.join(IMAGE_SUFFIXES)} files."
        )
    return images, labels, skipped
