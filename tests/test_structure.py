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
    {"training", "video", "encoding"},
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


def test_no_argparse_namespace_reaches_the_batch_jobs():
    """Options are dataclasses below the command line: the batch jobs (``essence.scale``) take their job
    and models dataclasses, never the parsed arguments of a command."""
    mentions = [f"{path.relative_to(REPO)}:{number}" for path in sorted((PACKAGE / "scale").rglob("*.py"))
                for number, line in enumerate(path.read_text().splitlines(), 1) if "argparse" in line]
    assert not mentions, "\n".join(mentions)


def _imports_the_cli(node: ast.AST) -> bool:
    if isinstance(node, ast.Import):
        return any(alias.name == "essence.cli" or alias.name.startswith("essence.cli.") for alias in node.names)
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        if node.module == "essence":
            return any(alias.name == "cli" for alias in node.names)
        return node.module == "essence.cli" or node.module.startswith("essence.cli.")
    return False


def test_the_benchmark_builds_the_library_s_jobs_without_the_command_line():
    """``bench/`` measures the library: it builds the job dataclasses itself, so a change to how the
    command line parses its options cannot change what a benchmark measures."""
    found = [f"{path.relative_to(REPO)}:{node.lineno}" for path in sorted((REPO / "bench").rglob("*.py"))
             for node in ast.walk(ast.parse(path.read_text(), str(path))) if _imports_the_cli(node)]
    assert not found, "\n".join(found)


def _called_names(folder: Path) -> dict[str, set[str]]:
    """Every function name each Python file under ``folder`` calls (``f(...)`` and ``x.f(...)``)."""
    calls = {}
    for path in sorted(folder.rglob("*.py")):
        nodes = [node.func for node in ast.walk(ast.parse(path.read_text(), str(path))) if isinstance(node, ast.Call)]
        calls[str(path.relative_to(REPO))] = {getattr(f, "id", getattr(f, "attr", "")) for f in nodes}
    return calls


def test_exactly_one_function_trains_a_direction_and_every_front_end_calls_it():
    """One training call (``essence.training.train``): no second public way to train in the library,
    and the command line, the nodes, the batch jobs and the benchmarks reach the loop only through it."""
    defined = [f"{path.relative_to(REPO)}:{node.lineno} {node.name}" for path in sorted(PACKAGE.rglob("*.py"))
               for node in ast.walk(ast.parse(path.read_text(), str(path)))
               if isinstance(node, ast.FunctionDef) and node.name.split("_")[0] == "train"
               and node.name not in ("train_mode", "train_tasks", "train_job",
                                     "train_encoder", "train_encoder_file")]  # these train an encoder, not a direction
    assert [entry.split(" ")[-1] for entry in defined] == ["train"], defined
    others = {"train_essence", "train_best_candidate", "_train_starts", "_optimise"}
    front_ends = [PACKAGE / "cli", PACKAGE / "scale", REPO / "nodes", REPO / "bench"]
    wrong = [f"{path} calls {sorted(names & others)}" for folder in front_ends
             for path, names in _called_names(folder).items() if names & others]
    assert not wrong, "\n".join(wrong)
    callers = {path for folder in front_ends for path, names in _called_names(folder).items() if "train" in names}
    assert {"essence/cli/directions.py", "essence/cli/demo.py", "essence/scale/train_batch.py", "nodes/train.py",
            "bench/measure.py"} <= callers, callers


# the loose arguments pivotal tuning once travelled as, in place of one ``PivotalTuning``
LOOSE_TUNING = {"refine", "tuning_progress", "tuning_frames", "tuning_passes"}
RESOLVERS = {"networks/loaders.py", "faces/align.py"}  # the only places a model-or-path is resolved
MODELS = {"FaceLandmarker", "E4EEncoder", "StyleGAN2Generator", "ClipGuide", "IdentityEncoder", "torch.nn.Module"}


def _functions(path: Path) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    return [node for node in ast.walk(ast.parse(path.read_text(), str(path)))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]


def _fields(path: Path) -> list[tuple[str, int]]:
    """(name, line) of every annotated class attribute (the fields of dataclasses)."""
    return [(item.target.id, item.lineno) for node in ast.walk(ast.parse(path.read_text(), str(path)))
            if isinstance(node, ast.ClassDef) for item in node.body
            if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)]


def test_pivotal_tuning_crosses_the_layers_as_one_value():
    """A tuning option is one ``PivotalTuning`` (None: no tuning) from every front end down to the
    library: no function or job of the library takes ``refine`` and the arguments that went with it
    (a node's ``refine`` is its ComfyUI input, which the node turns into that value), and a
    parameter named ``tuning`` is that value, in the library and in the nodes."""
    loose = []
    for path in _modules():
        arguments = [(a.arg, f.lineno) for f in _functions(path) for a in f.args.args + f.args.kwonlyargs]
        loose += [f"{path.relative_to(REPO)}:{line} {name}" for name, line in arguments + _fields(path)
                  if name in LOOSE_TUNING]
    assert not loose, "\n".join(loose)
    other = [f"{path.relative_to(REPO)}:{function.lineno}"
             for path in _modules() + sorted((REPO / "nodes").glob("*.py")) for function in _functions(path)
             for argument in function.args.args + function.args.kwonlyargs
             if argument.arg == "tuning" and "PivotalTuning" not in ast.unparse(argument.annotation or ast.Name("_"))]
    assert not other, "\n".join(other)


def test_a_model_or_its_path_is_resolved_by_one_function_per_model():
    """"The model given, or the one loaded from the path given" (``landmarks if isinstance(landmarks,
    FaceLandmarker) else load_landmarker(landmarks)`` and its like) is written once per model, in
    ``networks.loaders`` (``generator_from``, ``encoder_from``, ``perceptual_network``) and
    ``faces.align`` (``landmarker_from``), so every caller follows the same rule."""
    repeated = []
    for path in _modules():
        if path.relative_to(PACKAGE).as_posix() in RESOLVERS:
            continue
        for function in _functions(path):
            calls = [node for node in ast.walk(function) if isinstance(node, ast.Call)]
            checks = {ast.unparse(call.args[1]) for call in calls
                      if ast.unparse(call.func) == "isinstance" and len(call.args) == 2}
            loads = [call for call in calls if ast.unparse(call.func).startswith("load_")]
            if checks & MODELS and loads:
                repeated.append(f"{path.relative_to(REPO)}:{function.lineno} {function.name}")
    assert not repeated, "\n".join(repeated)
