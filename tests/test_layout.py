"""The README's map holds: what each place imports.

- `keras_selfattn`: Keras (its ops) alone, so the layers run on every backend.
- the zoo's machinery (`zoo/*.py`): no architecture or task folder.
- an architecture folder (`zoo/text_transformer/`): the machinery, never a task.
- a task folder: architecture folders and the machinery, never another task.
- no two zoo modules import each other, directly or through others.

Read from the source with `ast` (every import, at module level or inside a
function), so a change that breaks a rule fails here naming the file and the
import.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TASK_FOLDERS = ("text_classifier", "image_classifier", "text_encoder", "translator")
ARCHITECTURE_FOLDERS = ("text_transformer",)
MODEL_FOLDERS = TASK_FOLDERS + ARCHITECTURE_FOLDERS
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


def module_name(path):
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


ZOO_MODULES = {module_name(path): path for path in sources("zoo")}


def zoo_imports(path):
    """The zoo modules `path` imports (a name imported from a package is its
    module when it is one: `from zoo import presets` imports `zoo.presets`)."""
    found = set()
    package = module_name(path) if path.name == "__init__.py" else \
        module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in ZOO_MODULES)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            for alias in node.names:
                if f"{base}.{alias.name}" in ZOO_MODULES:
                    found.add(f"{base}.{alias.name}")
                elif base in ZOO_MODULES:
                    found.add(base)
    found.discard(module_name(path))
    return found


def folder_of(module):
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in MODEL_FOLDERS) \
        else None


@pytest.mark.parametrize("folder", TASK_FOLDERS)
def test_a_task_folder_imports_no_other_task(folder):
    for path in sources(f"zoo/{folder}"):
        for name in zoo_imports(path):
            other = folder_of(name)
            assert other in (folder, None) or other in ARCHITECTURE_FOLDERS, (
                f"{path.relative_to(ROOT)} imports {name}: a task builds on architecture "
                "folders and the machinery, never on another task")


@pytest.mark.parametrize("folder", ARCHITECTURE_FOLDERS)
def test_an_architecture_folder_imports_no_task(folder):
    for path in sources(f"zoo/{folder}"):
        for name in zoo_imports(path):
            assert folder_of(name) not in TASK_FOLDERS, (
                f"{path.relative_to(ROOT)} imports {name}: an architecture is shared by its "
                "tasks and owned by none")


def import_cycles(graph):
    """The strongly connected groups of more than one module (Tarjan)."""
    order, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(module):
        order[module] = low[module] = len(order)
        stack.append(module)
        on_stack.add(module)
        for imported in sorted(graph[module]):
            if imported not in order:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], order[imported])
        if low[module] == order[module]:
            group = []
            while not group or group[-1] != module:
                group.append(stack.pop())
                on_stack.discard(group[-1])
            if len(group) > 1:
                cycles.append(sorted(group))

    for module in sorted(graph):
        if module not in order:
            visit(module)
    return cycles


def test_the_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert import_cycles(graph) == [["a", "b", "c"]]
    assert import_cycles({"a": {"b"}, "b": set()}) == []


def test_no_zoo_modules_import_each_other():
    graph = {module: zoo_imports(path) for module, path in ZOO_MODULES.items()}
    assert sum(map(len, graph.values())) > 100  # the reader sees the zoo's imports
    assert import_cycles(graph) == [], "zoo modules that import each other, directly or not"


def test_the_suite_order_names_files_of_the_suite():
    # A renamed file would silently lose its place among the longest first.
    from conftest import LONGEST_FILES_FIRST

    missing = [name for name in LONGEST_FILES_FIRST if not (ROOT / "tests" / name).is_file()]
    assert not missing and len(set(LONGEST_FILES_FIRST)) == len(LONGEST_FILES_FIRST), missing
