"""The README's newcomer's map holds: what each of the five places imports.

Read from the source with `ast` (every import, at module level or inside a
function), so a change that breaks a rule fails here naming the file and the
import.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODEL_FOLDERS = ("text_classifier", "image_classifier", "text_encoder", "translator")
STANDARD_LIBRARY = {"dataclasses", "math", "string", "functools", "contextlib"}


def imports_of(path):
    """Every module name `path` imports, absolute, first to last."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.append(node.module)
    return names


def sources(folder):
    return sorted((ROOT / folder).rglob("*.py"))


def test_the_map_is_read_from_real_files():
    assert len(sources("keras_selfattn/layers")) >= 10
    assert imports_of(ROOT / "keras_selfattn/kernels.py")  # the reader finds imports


def test_kernels_import_keras_ops_only():
    path = ROOT / "keras_selfattn/kernels.py"
    for name in imports_of(path):
        assert name in STANDARD_LIBRARY or name == "keras", f"{path.name} imports {name}"


@pytest.mark.parametrize("path", sources("keras_selfattn"), ids=lambda p: p.name)
def test_layers_import_keras_and_their_own_package_only(path):
    for name in imports_of(path):
        root = name.split(".")[0]
        assert root in {"keras", "keras_selfattn", "numpy"} | STANDARD_LIBRARY, (
            f"{path.relative_to(ROOT)} imports {name}: the layers stay backend-agnostic "
            "(keras.ops), TensorFlow and the zoo stay out")


@pytest.mark.parametrize("path", sorted((ROOT / "zoo").glob("*.py")), ids=lambda p: p.name)
def test_the_machinery_imports_no_model_folder(path):
    if path.name in ("__main__.py", "__init__.py"):  # the command line and the public names
        return
    for name in imports_of(path):
        parts = name.split(".")
        assert not (parts[0] == "zoo" and len(parts) > 1 and parts[1] in MODEL_FOLDERS), (
            f"zoo/{path.name} imports {name}: the machinery serves every model and "
            "imports none")


def test_private_keras_code_is_reached_through_keras_compat_only():
    offenders = []
    for path in sources("zoo"):
        if path.name == "keras_compat.py":
            continue
        for name in imports_of(path):
            if name.startswith(("keras.src", "keras_hub.src", "tensorflow.python")):
                offenders.append(f"{path.relative_to(ROOT)}: {name}")
    assert offenders == [], "private modules imported outside zoo/keras_compat.py"
