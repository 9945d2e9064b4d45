"""The package's import graph, computed from the source with ast: no cycle, layers respected.

Three views of the graph (``module_graph(kind)``):

- ``"module"``: the imports that run when a module is imported (its top level, class bodies, top-level
  ``try``/``if``), not those inside functions and not ``if TYPE_CHECKING:`` blocks;
- ``"runtime"``: every import that can ever run, function-level (lazy) imports included; only
  ``if TYPE_CHECKING:`` blocks are left out (they never execute);
- ``"all"``: every import statement, ``if TYPE_CHECKING:`` blocks included.

``import unisrec`` / ``from unisrec import X`` is an edge to the package itself (``unisrec/__init__.py``), whose
lazy attributes reach the DataFrame API and serving: a module that needs the version imports ``unisrec.version``.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Literal

import pytest

PACKAGE = Path(__file__).parent.parent / "unisrec"
Kind = Literal["module", "runtime", "all"]
SERVING = {"unisrec.recommend", "unisrec.export", "unisrec.serve", "unisrec.checkpoint", "unisrec.cli"}


def _module_name(path: Path, package: Path) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.AST) -> bool:
    """``if TYPE_CHECKING:`` or ``if typing.TYPE_CHECKING:``."""
    if not isinstance(node, ast.If):
        return False
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.Module, kind: Kind) -> list[ast.Import | ast.ImportFrom]:
    """The import statements of one module that count for ``kind``."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
            return
        if _is_type_checking(node) and kind != "all":
            assert isinstance(node, ast.If)
            for statement in node.orelse:  # the else branch does run
                visit(statement)
            return
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) and kind == "module":
            return  # runs when called, not when imported
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def module_graph(kind: Kind = "module", package: Path = PACKAGE) -> dict[str, set[str]]:
    """module -> the modules of ``package`` it imports (see the module docstring for ``kind``)."""
    root = package.name
    modules = {_module_name(p, package): p for p in package.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for node in _import_nodes(ast.parse(path.read_text()), kind):
            if isinstance(node, ast.ImportFrom):
                if node.level:  # relative import: resolve against this module's package
                    base = name.split(".")[: len(name.split(".")) - node.level + (path.name == "__init__.py")]
                    module = ".".join([*base, node.module] if node.module else base)
                else:
                    module = node.module or ""
                if module != root and not module.startswith(root + "."):
                    continue
                # ``from a import b``: b may be a submodule; otherwise the edge is to a itself
                targets = {f"{module}.{a.name}" for a in node.names} & set(modules) or {module}
            else:
                targets = {a.name for a in node.names}
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_cycle_finder_finds_a_planted_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_graph_counts_lazy_imports_and_tells_type_only_ones_apart(tmp_path: Path) -> None:
    """A planted package: a lazy (function-level) cycle, a type-only import, an import of the package itself."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("def __getattr__(name):\n    from pkg import top\n    return top.X\n")
    (pkg / "low.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.top import X\n"
        "def f():\n    from pkg.mid import g\n    return g()\n"
    )
    (pkg / "mid.py").write_text("from pkg.low import f\ntry:\n    import pkg.extra\nexcept ImportError:\n    pass\n")
    (pkg / "extra.py").write_text("from . import low\n")
    (pkg / "top.py").write_text("from pkg import low\nfrom pkg import __name__ as X\n")
    module = module_graph("module", pkg)
    runtime = module_graph("runtime", pkg)
    everything = module_graph("all", pkg)
    assert module["pkg.low"] == set() and module["pkg.mid"] == {"pkg.low", "pkg.extra"}
    assert module["pkg.extra"] == {"pkg.low"}  # a relative import
    assert module["pkg.top"] == {"pkg.low", "pkg"}  # ``from pkg import name`` is an edge to the package
    assert find_cycle(module) is None
    assert runtime["pkg.low"] == {"pkg.mid"} and runtime["pkg"] == {"pkg.top"}
    assert find_cycle(runtime) in (["pkg.low", "pkg.mid", "pkg.low"], ["pkg", "pkg.top", "pkg"])
    assert everything["pkg.low"] == {"pkg.mid", "pkg.top"}


@pytest.mark.parametrize("kind", ["module", "runtime"])
def test_no_import_cycle(kind: Kind) -> None:
    """No cycle inside unisrec/, counting every import that can run: at module level and inside functions."""
    graph = module_graph(kind)
    assert "unisrec.model" in graph and len(graph) > 40
    assert find_cycle(graph) is None, find_cycle(graph)


def test_no_type_only_cycle() -> None:
    """Counting ``if TYPE_CHECKING:`` imports too, nothing closes a cycle (the report writer reads records, not
    the planner's runs, since ``--report-only`` works from the records alone)."""
    graph = module_graph("all")
    assert find_cycle(graph) is None, find_cycle(graph)


def test_nothing_imports_the_package_top_level() -> None:
    """``unisrec/__init__.py`` reaches the DataFrame API and serving lazily; modules import what they need."""
    graph = module_graph("all")
    assert [m for m, targets in graph.items() if "unisrec" in targets] == []


def test_lower_layers_do_not_import_higher_ones() -> None:
    graph = module_graph("runtime")
    products = {"unisrec.recommend", "unisrec.serve", "unisrec.export", "unisrec.cli", "unisrec.report",
                "unisrec.frames", "unisrec.checkpoint", "unisrec.finetune", "unisrec.pretrain", "unisrec.train"}
    for low in ("unisrec.model", "unisrec.baselines", "unisrec.config", "unisrec.errors", "unisrec.atomic",
                "unisrec.losses", "unisrec.metrics", "unisrec.batches", "unisrec.datasets.processed",
                "unisrec.catalogue", "unisrec.topk", "unisrec.precision", "unisrec.version"):
        assert not graph[low] & products, (low, graph[low] & products)


def test_finetune_only_fine_tunes() -> None:
    """Nothing that pre-trains, trains BERT4Rec or evaluates reaches into fine-tuning, not even lazily."""
    graph = module_graph("runtime")
    for module in ("unisrec.pretrain", "unisrec.cloze", "unisrec.evaluate", "unisrec.training_data"):
        assert "unisrec.finetune" not in graph[module], module


def test_text_layer_is_below_training_and_products() -> None:
    graph = module_graph("runtime")
    text = {"unisrec.text_model", "unisrec.text_encoder", "unisrec.text_cache", "unisrec.word_drop"}
    higher = {"unisrec.model", "unisrec.train", "unisrec.finetune", "unisrec.pretrain", "unisrec.evaluate",
              "unisrec.checkpoint", "unisrec.recommend", "unisrec.serve", "unisrec.cli", "unisrec.report"}
    assert text <= set(graph)
    for module in text | {"unisrec.config"}:
        assert not graph[module] & higher, (module, graph[module] & higher)
    assert graph["unisrec.config"] <= {"unisrec.errors", "unisrec.atomic"}  # the settings need nothing else


def test_the_model_imports_no_serving_checkpoint_or_cli() -> None:
    """Not at module level, not inside a function, not even for type annotations."""
    graph = module_graph("all")
    for model in ("unisrec.model", "unisrec.baselines"):
        assert not graph[model] & SERVING, (model, graph[model] & SERVING)
    assert graph["unisrec.model"] <= {"unisrec.config", "unisrec.growing_rows"}
    assert graph["unisrec.growing_rows"] == set()  # a tensor utility (in-place row growth), below everything


def test_export_is_below_the_recommender() -> None:
    """export.py reads a ``VectorSource`` (what a Recommender offers) and never imports the recommender."""
    graph = module_graph("all")
    assert not graph["unisrec.export"] & {"unisrec.recommend", "unisrec.serve", "unisrec.cli", "unisrec.frames"}
    assert "unisrec.export" in graph["unisrec.recommend"]


def test_the_model_keeps_no_serving_state() -> None:
    """The model is only a model: no catalogue, no recommender, no run records, no serving methods."""
    import torch

    from unisrec.config import ModelConfig
    from unisrec.model import UniSRec

    model = UniSRec(ModelConfig(hidden_size=8, inner_size=16, n_layers=1, n_heads=2, n_experts=2), 3, torch.ones(3, 4))
    for name in ("recommender", "saved_info", "from_pretrained", "save_pretrained", "set_catalogue", "recommend",
                 "add_items", "export_vectors"):
        assert not hasattr(model, name), name
