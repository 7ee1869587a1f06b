"""The package's layering, read from its source (every import, deferred ones inside functions included)."""

import ast
from pathlib import Path

import pyro_sparse

PACKAGE = Path(pyro_sparse.__file__).parent


def _imports(path: Path, module: str) -> set[str]:
    """The pyro_sparse modules that ``path`` (module ``module``) imports anywhere in its body."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("pyro_sparse")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            if base.startswith("pyro_sparse"):
                out.add(base)
                out |= {f"{base}.{a.name}" for a in node.names}
    return out


def test_the_library_never_imports_the_command_line():
    """DESIGN: the CLI parses and reports; ``reproduce`` and every other module build on the library
    (:func:`pyro_sparse.stage.train_stage`), so no module but ``cli`` itself may import ``pyro_sparse.cli``."""
    offenders = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        module = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        if module == "pyro_sparse.cli":
            continue
        hits = {m for m in _imports(path, module) if m == "pyro_sparse.cli" or m.startswith("pyro_sparse.cli.")}
        if hits:
            offenders[module] = sorted(hits)
    assert not offenders, offenders


def test_the_import_scan_sees_deferred_relative_imports(tmp_path):
    """The scan above would see the old ``reproduce`` → ``cli`` import (relative, inside a function)."""
    f = tmp_path / "reproduce.py"
    f.write_text("def run():\n    from .cli import main as cli\n    return cli\n")
    assert "pyro_sparse.cli" in _imports(f, "pyro_sparse.reproduce")
