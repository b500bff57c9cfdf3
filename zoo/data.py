"""Reading users' labelled texts: CSV, TSV or JSON Lines.

Defined behaviour for awkward files:
- an empty file, or one without rows, raises `ValueError`;
- missing text/label columns raise `ValueError` listing the columns found;
- bytes that are not UTF-8 are replaced by U+FFFD, with a warning naming the
  lines (a CSV exported from a spreadsheet in another encoding still loads);
- rows whose text is empty or whitespace are skipped, with a warning;
- rows without a label are skipped, with a warning.
"""

import csv
import io
import json
import warnings
from pathlib import Path

TEXT_COLUMNS = ("text", "sentence", "review", "content", "document", "body")
LABEL_COLUMNS = ("label", "labels", "category", "class", "target", "sentiment")
FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl"}


def _decode(raw, path):
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("utf-8-sig", errors="replace")
        bad_lines = [
            number
            for number, line in enumerate(raw.split(b"\n"), start=1)
            if _not_utf8(line)
        ]
        shown = ", ".join(map(str, bad_lines[:10]))
        warnings.warn(
            f"{path}: {len(bad_lines)} line(s) are not valid UTF-8 (lines "
            f"{shown}{', ...' if len(bad_lines) > 10 else ''}); the invalid "
            "bytes were replaced by U+FFFD.",
            stacklevel=3,
        )
        return text


def _not_utf8(line):
    try:
        line.decode("utf-8")
        return False
    except UnicodeDecodeError:
        return True


def _rows(text, kind, path):
    if kind == "jsonl":
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(
                    f"{path}, line {number}: not a JSON object ({error.msg}). "
                    "Expected one JSON object per line."
                ) from None
            if not isinstance(row, dict):
                raise ValueError(
                    f"{path}, line {number}: expected a JSON object, received "
                    f"{type(row).__name__}."
                )
            rows.append(row)
        return rows
    delimiter = "\t" if kind == "tsv" else ","
    return list(csv.DictReader(io.StringIO(text), delimiter=delimiter))


def _pick(columns, requested, candidates, role, path):
    if requested is not None:
        if requested not in columns:
            raise ValueError(
                f"{path}: no {role} column named {requested!r}. Columns found: "
                f"{sorted(columns)}."
            )
        return requested
    lowered = {column.lower().strip(): column for column in columns}
    for candidate in candidates:
        if candidate in lowered:
            return lowered[candidate]
    raise ValueError(
        f"{path}: could not find a {role} column among {sorted(columns)}; "
        f"expected one of {list(candidates)}, or name it with "
        f"--{role}-column."
    )


def read_labelled_texts(path, text_column=None, label_column=None,
                        require_labels=True):
    """Reads `(texts, labels)` from a CSV, TSV or JSONL file.

    Args:
        path: the file; its extension (`.csv`, `.tsv`, `.jsonl`/`.json`) picks
            the format.
        text_column, label_column: column names; detected when `None`.
        require_labels: whether a label column must exist. When `False` and
            none is found, `labels` is `None`.

    Returns:
        `(texts, labels)`: lists of `str` (labels as they appear in the file).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"No such data file: {path}")
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise ValueError(
            f"{path}: unknown format {path.suffix!r}; expected one of "
            f"{sorted(FORMATS)}."
        )
    raw = path.read_bytes()
    if not raw.strip():
        raise ValueError(f"{path} is empty; expected a header and rows.")
    rows = _rows(_decode(raw, path), kind, path)
    if not rows:
        raise ValueError(f"{path} has a header but no rows.")
    columns = set().union(*(row.keys() for row in rows)) - {None}
    text_key = _pick(columns, text_column, TEXT_COLUMNS, "text", path)
    try:
        label_key = _pick(columns, label_column, LABEL_COLUMNS, "label", path)
    except ValueError:
        if require_labels or label_column is not None:
            raise
        label_key = None

    texts, labels, empty, unlabelled = [], [], 0, 0
    for row in rows:
        text = row.get(text_key)
        text = "" if text is None else str(text)
        if not text.strip():
            empty += 1
            continue
        if label_key is not None:
            label = row.get(label_key)
            if label is None or str(label).strip() == "":
                unlabelled += 1
                continue
            labels.append(str(label).strip())
        texts.append(text)
    if empty:
        warnings.warn(f"{path}: skipped {empty} row(s) with empty text.", stacklevel=2)
    if unlabelled:
        warnings.warn(f"{path}: skipped {unlabelled} row(s) without a label.", stacklevel=2)
    if not texts:
        raise ValueError(f"{path}: no row has both a text and a label.")
    return texts, (labels if label_key is not None else None)


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
                tf.io.decode_image(data, expand_animations=False)
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


MINIMUM_PAIRS = 10
PAIR_HEADER = ("source", "target")


def read_sentence_pairs(path):
    """Reads `(sources, targets)` from a TSV or JSON Lines file of sentence pairs.

    TSV (any extension but `.jsonl`/`.json`): one pair a line,
    `source<TAB>target`, no header; a first line `source<TAB>target` is a
    header and skipped. JSONL: objects with `source` and `target` fields.
    Blank lines are skipped; bytes that are not UTF-8 are replaced by U+FFFD
    with a warning. A line without exactly one tab, a pair with an empty
    side, or fewer than ten pairs raise `ValueError` naming the lines.

    Returns:
        `(sources, targets)`: lists of `str`.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"No such data file: {path}")
    text = _decode(path.read_bytes(), path)
    pairs, problems = [], []
    if path.suffix.lower() in (".jsonl", ".json"):
        for number, row in enumerate(_rows(text, "jsonl", path), start=1):
            missing = [k for k in PAIR_HEADER if not isinstance(row.get(k), str)]
            if missing:
                raise ValueError(
                    f"{path}: record {number} has no text field {missing[0]!r}; "
                    f"expected 'source' and 'target' strings, found {sorted(row)}."
                )
            pairs.append((number, row["source"].strip(), row["target"].strip()))
    else:
        lines = text.splitlines()
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            fields = line.split("\t")
            if number == 1 and tuple(f.strip().lower() for f in fields) == PAIR_HEADER:
                continue
            if len(fields) != 2:
                problems.append(f"line {number} has {len(fields) - 1} tabs")
                continue
            pairs.append((number, fields[0].strip(), fields[1].strip()))
    problems += [f"line {number} has an empty {'source' if not source else 'target'}"
                 for number, source, target in pairs if not source or not target]
    if problems:
        raise ValueError(
            f"{path}: expected one 'source<TAB>target' pair a line with both "
            f"sides non-empty; {len(problems)} line(s) are not: "
            + "; ".join(problems[:5]) + ("; ..." if len(problems) > 5 else "")
        )
    if len(pairs) < MINIMUM_PAIRS:
        raise ValueError(
            f"{path}: {len(pairs)} sentence pair(s); a translator needs at "
            f"least {MINIMUM_PAIRS}."
        )
    return [p[1] for p in pairs], [p[2] for p in pairs]
