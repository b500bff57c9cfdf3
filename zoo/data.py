"""Reading users' labelled texts: CSV, TSV or JSON Lines.

Defined behaviour for awkward files (nothing is dropped silently):
- an empty file, or one without rows, raises `ValueError`;
- missing text/label columns raise `ValueError` listing the columns found;
- bytes that are not UTF-8 are replaced by U+FFFD, with a warning naming the
  lines (a CSV exported from a spreadsheet in another encoding still loads);
- a NUL byte (a binary file) or a field over `MAX_FIELD_CHARACTERS` raises
  `ValueError` naming the line;
- TSV is read without quote processing (a `"` is a character like any other);
  a CSV quoted field that opens and never closes raises `ValueError` naming
  the line where its record starts, where the csv module would read the rest
  of the file into that one field;
- rows whose text is empty or whitespace, and rows without a label, are
  skipped and counted (`ReadCounts`); more than `MAX_SKIPPED_SHARE` of the
  rows skipped raises `ValueError` unless `allow_skipped=True`;
- texts longer than `MAX_TEXT_CHARACTERS` are cut to it, and counted.
"""

import contextlib
import csv
import io
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

TEXT_COLUMNS = ("text", "sentence", "review", "content", "document", "body")
LABEL_COLUMNS = ("label", "labels", "category", "class", "target", "sentiment")
FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl"}
# About 25,000 WordPiece tokens: six times the longest documents the zoo
# reads (4,096 tokens); what is beyond is cut at read time, so that one
# oversized record cannot take the memory of the whole run.
MAX_TEXT_CHARACTERS = 100_000
# A field longer than this is not text a model reads (a CSV's whole file in
# one field, a binary blob): refused rather than cut.
MAX_FIELD_CHARACTERS = 16 << 20
MAX_SKIPPED_SHARE = 0.01


@dataclass
class ReadCounts:
    """What reading a data file kept and dropped: `rows` read, `used`,
    `skipped` by reason, and texts `cut` to `MAX_TEXT_CHARACTERS`."""

    path: str
    rows: int = 0
    used: int = 0
    skipped: dict = field(default_factory=dict)
    cut: int = 0

    def skip(self, reason):
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def _reasons(self):
        return ", ".join(f"{n} {reason}" for reason, n in self.skipped.items())

    def summary(self):
        """One line for the training log."""
        line = f"{self.path}: {self.rows} rows read, {self.used} used"
        if self.skipped:
            line += "; skipped " + self._reasons()
        if self.cut:
            line += f"; {self.cut} text(s) cut to {MAX_TEXT_CHARACTERS} characters"
        return line

    def as_dict(self):
        return {"path": self.path, "rows": self.rows, "used": self.used,
                "skipped": dict(self.skipped), "cut_to_characters": MAX_TEXT_CHARACTERS,
                "cut": self.cut}

    def check_skipped(self, allow_skipped):
        """Refuses to go on when more than `MAX_SKIPPED_SHARE` of the rows
        were skipped, unless `allow_skipped`."""
        skipped = sum(self.skipped.values())
        if skipped > MAX_SKIPPED_SHARE * self.rows and not allow_skipped:
            raise ValueError(
                f"{self.path}: {skipped} of {self.rows} rows skipped ({self._reasons()}), more than "
                f"the {MAX_SKIPPED_SHARE:.0%} allowed; fix the file, or pass --allow-skipped "
                "(allow_skipped=True) to use the other rows.")

    def cut_text(self, text):
        if len(text) > MAX_TEXT_CHARACTERS:
            self.cut += 1
            return text[:MAX_TEXT_CHARACTERS]
        return text


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
        for number, line in enumerate(_lines(text), start=1):
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
    if kind == "tsv":
        # Tabs separate and newlines end rows; quotes are text.
        options = dict(delimiter="\t", quoting=csv.QUOTE_NONE)
    else:
        # strict: a quoted field still open at the end of the file is an
        # error, not the rest of the file read as one field.
        options = dict(delimiter=",", strict=True)
    reader = csv.DictReader(io.StringIO(text, newline=""), **options)
    rows, record_start = [], 1
    with _field_size_limit(MAX_FIELD_CHARACTERS):
        try:
            for row in reader:
                rows.append(row)
                record_start = reader.reader.line_num + 1
        except csv.Error as error:
            raise ValueError(f"{path}, line {record_start}: {_csv_problem(error)}") from None
    return rows


@contextlib.contextmanager
def _field_size_limit(limit):
    previous = csv.field_size_limit(limit)  # process-wide: restored after
    try:
        yield
    finally:
        csv.field_size_limit(previous)


def _csv_problem(error):
    message = str(error)
    if "field larger than field limit" in message:
        return (f"a field of more than {MAX_FIELD_CHARACTERS} characters; expected text "
                "fields (is a quote left open, or is this not a CSV file?)")
    if "unexpected end of data" in message:
        return ("a quoted field opens in the record starting here and never closes; "
                "close the quote, or double it (\"\") inside a quoted field")
    return f"not valid CSV ({message})"


def _lines(text):
    """Lines ended by "\\n" (or "\\r\\n"): `str.splitlines` would also split
    at U+2028 and the other Unicode separators, which a sentence (and a JSON
    string) may hold."""
    return [line[:-1] if line.endswith("\r") else line for line in text.split("\n")]


def _check_text_file(raw, path):
    nul = raw.find(b"\0")
    if nul >= 0:
        line = raw.count(b"\n", 0, nul) + 1
        raise ValueError(f"{path}, line {line}: a NUL byte; expected a UTF-8 text file, "
                         "not a binary or UTF-16 one.")


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
                        require_labels=True, allow_skipped=False):
    """Reads `(texts, labels)` from a CSV, TSV or JSONL file
    (`read_labelled_data` without its counts)."""
    texts, labels, _ = read_labelled_data(path, text_column, label_column, require_labels,
                                          allow_skipped)
    return texts, labels


def read_labelled_data(path, text_column=None, label_column=None,
                       require_labels=True, allow_skipped=False):
    """Reads `(texts, labels, counts)` from a CSV, TSV or JSONL file.

    Args:
        path: the file; its extension (`.csv`, `.tsv`, `.jsonl`/`.json`) picks
            the format.
        text_column, label_column: column names; detected when `None`.
        require_labels: whether a label column must exist. When `False` and
            none is found, `labels` is `None`.
        allow_skipped: go on when more than `MAX_SKIPPED_SHARE` of the rows
            have an empty text or no label.

    Returns:
        `(texts, labels, counts)`: lists of `str` (labels as they appear in
        the file, stripped) and the `ReadCounts`.
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
    _check_text_file(raw, path)
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

    counts = ReadCounts(str(path), rows=len(rows))
    texts, labels = [], []
    for row in rows:
        text = row.get(text_key)
        text = "" if text is None else str(text)
        if not text.strip():
            counts.skip("with empty text")
            continue
        if label_key is not None:
            label = row.get(label_key)
            if label is None or str(label).strip() == "":
                counts.skip("without a label")
                continue
            labels.append(str(label).strip())
        texts.append(counts.cut_text(text))
    counts.used = len(texts)
    if not texts:
        raise ValueError(f"{path}: no row has both a text and a label.")
    counts.check_skipped(allow_skipped)
    return texts, (labels if label_key is not None else None), counts


MINIMUM_PAIRS = 10
PAIR_HEADER = ("source", "target")


def read_sentence_pairs(path):
    """Reads `(sources, targets)` from a TSV or JSON Lines file of sentence
    pairs (`read_sentence_data` without its counts)."""
    sources, targets, _ = read_sentence_data(path)
    return sources, targets


def read_sentence_data(path):
    """Reads `(sources, targets, counts)` from a TSV or JSON Lines file of sentence pairs.

    TSV (any extension but `.jsonl`/`.json`): one pair a line,
    `source<TAB>target`, no header; a first line `source<TAB>target` is a
    header and skipped. JSONL: objects with `source` and `target` fields.
    Blank lines are skipped; bytes that are not UTF-8 are replaced by U+FFFD
    with a warning. A line without exactly one tab, a pair with an empty
    side, a NUL byte, or fewer than ten pairs raise `ValueError` naming the
    lines. Sentences longer than `MAX_TEXT_CHARACTERS` are cut to it.

    Returns:
        `(sources, targets, counts)`: lists of `str` and the `ReadCounts`.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"No such data file: {path}")
    raw = path.read_bytes()
    _check_text_file(raw, path)
    text = _decode(raw, path)
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
        for number, line in enumerate(_lines(text), start=1):
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
    counts = ReadCounts(str(path), rows=len(pairs), used=len(pairs))
    sources = [counts.cut_text(p[1]) for p in pairs]
    targets = [counts.cut_text(p[2]) for p in pairs]
    return sources, targets, counts
