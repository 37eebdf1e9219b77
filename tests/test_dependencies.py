"""Dependencies point one way: the tests and the CLI reach the milestones through impl/adapters.py, and a
milestone that builds on another's run receives it (a run directory, w01's training parts) from its caller; no
milestone imports the adapters, so a learner's w01 or w07 is the one w09, w15 and w19 build on."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imports_adapters(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "impl" and any(a.name == "adapters" for a in node.names):
            return True
        if isinstance(node, (ast.Import, ast.ImportFrom)) and "impl.adapters" in (
                [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]):
            return True
    return False


def test_no_milestone_and_no_core_module_imports_the_adapters():
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "impl").rglob("*.py")
                 if p.name not in ("adapters.py", "__main__.py") and _imports_adapters(p)]
    assert offenders == [], f"these reach back through the adapters: {offenders}"


def test_the_guard_sees_an_import_of_the_adapters(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from impl import adapters\n    return adapters\n")
    assert _imports_adapters(bad)
