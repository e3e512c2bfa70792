"""The house rules of the layout: the core never imports the experiment layer, the experiment
layer and the benchmarks use only public names, and the README's table matches the tree."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
CORE = sorted(p for p in (ROOT / "jaxfeat").glob("*.py"))
EXPERIMENTS = sorted((ROOT / "jaxfeat" / "experiments").glob("*.py"))
BENCHMARKS = sorted((ROOT / "benchmarks").glob("*.py"))


def _imports(path: pathlib.Path):
    """(module, name) for every ``from module import name`` and (module, None) for ``import``."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            module = "." * node.level + (node.module or "")
            for alias in node.names:
                yield module, alias.name
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None


def _violations(paths, rule):
    return [f"{p.relative_to(ROOT)}: {m} {n}" for p in paths for m, n in _imports(p) if rule(m, n)]


def _private(module: str, name: str | None) -> bool:
    # A private *module* of the package (``from . import _validate``) is the package's own
    # business; a private name taken out of another module is not (dunders included: read
    # ``jaxfeat.__version__`` off the module).
    if name is None or module.strip(".") == "":
        return False
    return name.startswith("_")


def test_no_module_imports_another_modules_private_names():
    assert _violations(CORE + EXPERIMENTS + BENCHMARKS, _private) == []


def test_core_never_imports_the_experiment_layer():
    rule = lambda m, n: "experiments" in m or (n == "experiments")
    assert _violations(CORE, rule) == []


@pytest.mark.parametrize("paths", [EXPERIMENTS, BENCHMARKS], ids=["experiments", "benchmarks"])
def test_experiments_and_benchmarks_use_only_public_jaxfeat(paths):
    # Relative imports inside jaxfeat.experiments are its own modules; from the core only
    # `import jaxfeat` and public names.
    def rule(m, n):
        if m.startswith("jaxfeat"):
            parts = m.split(".")
            return any(part.startswith("_") for part in parts) or _private(m, n)
        return m.startswith("..")

    assert _violations(paths, rule) == []


def test_the_check_catches_a_private_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from jaxfeat._fit import _trim\nfrom . import _validate\nimport jaxfeat\n")
    assert _violations_at(bad, _private) == ["jaxfeat._fit _trim"]


def _violations_at(path, rule):
    return [f"{m} {n}" for m, n in _imports(path) if rule(m, n)]


def test_readme_table_names_every_module():
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## What is in the package") :]
    table = table[: table.index("\n## ", 5)]
    for path in CORE:
        if path.name == "__init__.py":
            continue
        assert f"`jaxfeat.{path.stem}" in table, path.name
    for path in EXPERIMENTS:
        if path.name != "__init__.py":
            assert f"`{path.stem}`" in table or path.stem in table, path.name
    for path in BENCHMARKS:
        assert path.name in table, path.name
