"""Every `>>>` example in the package's docstrings runs and prints what it says.

Each docstring is a test of its own, run by `doctest` with NumPy and Keras
(and TensorFlow for the zoo) imported as the examples write them (`np`,
`keras`, `tf`) and the names of its module. `make test` runs the layers'
examples on JAX too; the zoo is TensorFlow's.
"""

import doctest
import importlib
from pathlib import Path

import pytest

from backend import BACKEND

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("keras_selfattn", "zoo") if BACKEND == "tensorflow" else ("keras_selfattn",)


def module_names():
    names = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "presets" in path.parts or path.name == "__main__.py":
                continue
            if ">>>" in path.read_text(encoding="utf-8"):
                names.append(".".join(path.relative_to(ROOT).with_suffix("").parts))
    return names


def examples():
    found = []
    finder = doctest.DocTestFinder(exclude_empty=True)
    for name in module_names():
        module = importlib.import_module(name)
        for test in finder.find(module, name):
            # A class is found through each module that imports it: kept
            # once, in the module that defines it.
            if test.examples and getattr(test, "filename", None) == module.__file__:
                found.append(test)
    return sorted(found, key=lambda test: test.name)


EXAMPLES = examples()


def test_examples_are_found_in_both_packages():
    modules = {test.name.split(".")[0] for test in EXAMPLES}
    assert modules == set(PACKAGES) and len(EXAMPLES) >= 10 * len(PACKAGES)


@pytest.mark.parametrize("test", EXAMPLES, ids=lambda test: test.name)
def test_docstring_example_runs(test):
    import keras
    import numpy as np

    test.globs = {**test.globs, "np": np, "keras": keras}
    if BACKEND == "tensorflow":
        import tensorflow as tf

        test.globs["tf"] = tf
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    report = []
    runner.run(test, out=report.append)
    assert runner.failures == 0, "".join(report)
