"""The package's structure, as ARCHITECTURE.md draws it: layers that import only downward, sub-packages
that talk to each other through their public names, a small top-level API, and nodes that use only
public names. Read from the source's import statements, so a new import that breaks the layering fails
here rather than in a user's import cycle."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "essence"

# Lowest first. A module may import from its own layer's package and from any lower layer; packages on
# the same layer are independent of each other.
LAYERS: list[set[str]] = [
    {"errors", "version"},
    {"runtime"},
    {"storage"},
    {"networks", "faces"},
    {"latents"},
    {"training", "video"},
    {"scale"},
    {"cli"},
]
LAYER_OF = {name: index for index, names in enumerate(LAYERS) for name in names}
TOP_LEVEL = {"__init__", "__main__"}  # the entry points sit above everything


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _unit(path: Path) -> str:
    """The layer unit a file belongs to: its sub-package, or its own name at the top level."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return parts[0]


def _imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(absolute module inside ``essence``, imported names, line) of every relative import of a file."""
    found = []
    package = list(path.relative_to(REPO).with_suffix("").parts[:-1])
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - node.level + 1]
            module = ".".join(base + ([node.module] if node.module else []))
            found.append((module, [alias.name for alias in node.names], node.lineno))
    return found


def _public(package: str) -> set[str]:
    return set(importlib.import_module(package).__all__)


def test_at_most_ten_modules_at_the_top_of_the_package():
    top = sorted(p.stem for p in PACKAGE.glob("*.py"))
    assert len(top) <= 10, top


def test_the_top_level_api_is_small_and_every_name_exists():
    import essence

    assert len(essence.__all__) <= 20, essence.__all__
    assert len(set(essence.__all__)) == len(essence.__all__)
    for name in essence.__all__:
        assert hasattr(essence, name), name


@pytest.mark.parametrize("package", sorted({_unit(p) for p in _modules() if (PACKAGE / _unit(p)).is_dir()}))
def test_every_sub_package_lists_its_public_names(package):
    module = importlib.import_module(f"essence.{package}")
    assert module.__doc__, f"essence.{package} says what it holds"
    assert module.__all__, f"essence.{package} has public names"
    for name in module.__all__:
        assert hasattr(module, name), f"essence.{package}.__all__ names {name}, which it does not have"
        assert not name.startswith("_"), name


def test_imports_point_down_the_layers():
    upward = []
    for path in _modules():
        unit = _unit(path)
        if unit in TOP_LEVEL:
            continue
        for module, _, line in _imports(path):
            parts = module.split(".")
            if parts[0] != "essence" or len(parts) < 2:
                upward.append(f"{path.relative_to(REPO)}:{line} imports {module} (outside the package)")
                continue
            target = parts[1]
            if target == unit:
                continue
            if target not in LAYER_OF or LAYER_OF[target] >= LAYER_OF[unit]:
                upward.append(f"{path.relative_to(REPO)}:{line} ({unit}) imports from {target}")
    assert not upward, "\n".join(upward)


def test_modules_import_no_private_name_of_another_sub_package():
    private = []
    for path in _modules():
        unit = _unit(path)
        for module, names, line in _imports(path):
            parts = module.split(".")
            if len(parts) < 2 or parts[1] == unit or not (PACKAGE / parts[1]).is_dir():
                continue
            public = _public(f"essence.{parts[1]}")
            for name in names:
                if name not in public:
                    private.append(f"{path.relative_to(REPO)}:{line} imports {name} from {module}, "
                                   f"not in essence.{parts[1]}.__all__")
    assert not private, "\n".join(private)


def test_the_module_import_graph_has_no_cycles():
    graph: dict[str, set[str]] = {}
    for path in _modules():
        name = ".".join(path.relative_to(REPO).with_suffix("").parts)
        name = name.removesuffix(".__init__")
        graph.setdefault(name, set())
        for module, names, _ in _imports(path):
            # "from .pkg import name" may import a sub-module called name
            candidates = [f"{module}.{n}" for n in names] + [module]
            graph[name].update(c for c in candidates if (REPO / (c.replace(".", "/") + ".py")).is_file()
                               or (REPO / c.replace(".", "/") / "__init__.py").is_file())
    # a package's __init__ importing its own modules is not a cycle of concern; a module importing
    # its package's __init__ back would be
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(node: str, stack: list[str]) -> bool:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if nxt == node or (node.startswith(nxt + ".") and nxt in graph):
                # a module importing its own package: that package's __init__ must not import it back
                # in a way that matters; checked by importing each module on its own below
                continue
            if state.get(nxt) == 1:
                cycle.extend(stack[stack.index(nxt):] + [nxt] if nxt in stack else [node, nxt])
                return True
            if state.get(nxt) is None and visit(nxt, stack + [nxt]):
                return True
        state[node] = 2
        return False

    for node in sorted(graph):
        if state.get(node) is None and visit(node, [node]):
            break
    assert not cycle, " -> ".join(cycle)


def _private_names_used(folder: str, level: int) -> list[str]:
    """Imports of ``essence`` names that are not public, in the modules of ``folder`` (relative
    imports at ``level`` for the node pack, absolute ones for the benchmark), and for the nodes their
    ``essence.<name>`` attribute uses."""
    import essence

    sub_packages = {p.stem for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    private = []
    for path in sorted((REPO / folder).glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == level and (node.module or "").startswith("essence"):
                parts = node.module.split(".")
                public = set(importlib.import_module(".".join(parts[:2])).__all__)
                if node.module == "essence":  # the package's public names and its sub-packages
                    public |= sub_packages | {"__version__"}
                private += [f"{path.relative_to(REPO)}:{node.lineno} imports {alias.name} from {node.module}"
                            for alias in node.names if alias.name not in public]
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "essence":
                if node.attr not in essence.__all__ and node.attr not in sub_packages | {"errors", "runtime"}:
                    private.append(f"{path.relative_to(REPO)}:{node.lineno} uses essence.{node.attr}")
    return private


def test_nodes_use_only_public_names():
    private = _private_names_used("nodes", level=2)
    assert not private, "\n".join(private)


def test_the_benchmark_uses_only_public_names():
    private = _private_names_used("bench", level=0)
    assert not private, "\n".join(private)
