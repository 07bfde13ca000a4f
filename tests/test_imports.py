"""No import cycle among semsynth's modules, counting the imports inside functions too (a
function-local import can hide a cycle; it must not be the reason one does not fail)."""

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "import_cycles.py"


def _tool():
    spec = importlib.util.spec_from_file_location("import_cycles", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_no_import_cycle_even_through_function_local_imports():
    tool = _tool()
    edges = tool.graph(local=True)
    assert "semsynth.labels" in edges["semsynth.data"] and sum(map(len, edges.values())) > 50  # a real graph
    assert tool.cycles(edges) == []


def test_the_cycle_finder_finds_a_cycle():
    tool = _tool()
    assert tool.cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
