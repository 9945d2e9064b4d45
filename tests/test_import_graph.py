"""The package's module-level import graph, computed from the source with ast: no cycle, layers respected.

Function-level (lazy) imports are not counted for the cycle check yet: the serving delegates of ``UniSRec`` still
import ``unisrec.recommend`` inside methods (docs/ARCHITECTURE.md, "Known knots"); they are for the checks that
say so (``module_graph(lazy=True)``).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).parent.parent / "unisrec"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_graph(lazy: bool = False) -> dict[str, set[str]]:
    """module -> unisrec modules it imports at module level (TYPE_CHECKING blocks left out); ``lazy``: also
    the imports inside functions and TYPE_CHECKING blocks."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree) if lazy else tree.body:
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("unisrec"):
                targets = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
                graph[name] |= {t for t in targets if t in modules and t != name}
            elif isinstance(node, ast.Import):
                graph[name] |= {a.name for a in node.names if a.name in modules and a.name != name}
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


def test_no_module_level_import_cycle() -> None:
    graph = module_graph()
    assert "unisrec.model" in graph and len(graph) > 40
    assert find_cycle(graph) is None


def test_lower_layers_do_not_import_higher_ones() -> None:
    graph = module_graph()
    products = {"unisrec.recommend", "unisrec.serve", "unisrec.export", "unisrec.cli", "unisrec.report",
                "unisrec.frames", "unisrec.checkpoint", "unisrec.finetune", "unisrec.pretrain", "unisrec.train"}
    for low in ("unisrec.model", "unisrec.config", "unisrec.errors", "unisrec.atomic", "unisrec.losses",
                "unisrec.metrics", "unisrec.batches", "unisrec.datasets.processed"):
        assert not graph[low] & products, (low, graph[low] & products)


def test_finetune_only_fine_tunes() -> None:
    """Nothing that pre-trains, trains BERT4Rec or evaluates reaches into fine-tuning, not even lazily."""
    graph = module_graph(lazy=True)
    for module in ("unisrec.pretrain", "unisrec.cloze", "unisrec.evaluate", "unisrec.training_data"):
        assert "unisrec.finetune" not in graph[module], module


def test_text_layer_is_below_training_and_products() -> None:
    graph = module_graph()
    text = {"unisrec.text_model", "unisrec.text_encoder", "unisrec.text_cache", "unisrec.word_drop"}
    higher = {"unisrec.model", "unisrec.train", "unisrec.finetune", "unisrec.pretrain", "unisrec.evaluate",
              "unisrec.checkpoint", "unisrec.recommend", "unisrec.serve", "unisrec.cli", "unisrec.report"}
    assert text <= set(graph)
    for module in text | {"unisrec.config"}:
        assert not graph[module] & higher, (module, graph[module] & higher)
    assert graph["unisrec.config"] <= {"unisrec.errors", "unisrec.atomic"}  # the settings need nothing else


def test_the_model_imports_no_serving_checkpoint_or_cli() -> None:
    graph = module_graph()
    serving = {"unisrec.recommend", "unisrec.export", "unisrec.serve", "unisrec.checkpoint", "unisrec.cli"}
    assert not graph["unisrec.model"] & serving
