"""The import rule of docs/architecture.md: packages import only from lower layers, so no package cycle exists.

Layers, lowest first: core (``vlafoundry.config``, ``io``, ``normalize``, ``registry``, ``progress`` and the package
root) < {``nn``, ``envs``} < ``data`` < ``models`` < ``train`` < {``eval``, ``serving``} < ``cli``. A module may import
its own package and any lower layer; packages of one layer (``nn`` and ``envs``; ``eval`` and ``serving``) never
import each other. Every import counts, also
those inside functions (a lazy import is still a dependency).
"""

from __future__ import annotations

import ast
from pathlib import Path

import vlafoundry

ROOT = Path(vlafoundry.__file__).parent
LAYER = {"core": 0, "nn": 1, "envs": 1, "data": 2, "models": 3, "train": 4, "eval": 5, "serving": 5, "cli": 6}


def package_of(module: str) -> str:
    """``vlafoundry.models.vla`` -> ``models``; top-level modules -> ``core`` (``__main__`` -> ``cli``)."""
    parts = module.split(".")
    if len(parts) >= 2 and parts[1] in LAYER:
        return parts[1]
    if len(parts) >= 2 and parts[1] == "__main__":
        return "cli"
    return "core"


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path, me: str | None = None) -> list[tuple[int, str]]:
    """(line, absolute module) of every ``vlafoundry`` import in the file (module ``me``, default: its name under
    the package), relative ones resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    me = me or module_name(path)
    pkg = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "vlafoundry"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if name.split(".")[0] == "vlafoundry":
                # ``from vlafoundry import models`` imports the package models
                targets = [f"{name}.{a.name}" if name == "vlafoundry" else name for a in node.names]
                out += [(node.lineno, t) for t in targets]
    return out


def violations() -> list[str]:
    bad = []
    for path in sorted(ROOT.rglob("*.py")):
        src = package_of(module_name(path))
        for line, target in imports_of(path):
            dst = package_of(target)
            if dst == src:
                continue
            if LAYER[dst] >= LAYER[src]:
                bad.append(f"{path.relative_to(ROOT.parent)}:{line}: {src} imports {target} ({dst}, layer "
                           f"{LAYER[dst]} >= {LAYER[src]})")
    return bad


def test_no_upward_or_sideways_imports():
    bad = violations()
    assert not bad, "import rule (docs/architecture.md) broken:\n" + "\n".join(bad)


def test_the_checker_sees_lazy_relative_and_sideways_imports(tmp_path):
    f = tmp_path / "mod.py"
    f.write_text("def f():\n    from vlafoundry.train import trainer\n    import vlafoundry.envs.babyai\n"
                 "from ..data import dataset\nfrom . import attention\n")
    found = sorted(t for _, t in imports_of(f, "vlafoundry.nn.mod"))
    assert found == ["vlafoundry.data", "vlafoundry.envs.babyai", "vlafoundry.nn", "vlafoundry.train"], found
    assert [package_of(t) for t in found] == ["data", "envs", "nn", "train"]
    assert package_of("vlafoundry.io") == "core" and package_of("vlafoundry.models.vla") == "models"
    assert LAYER["nn"] == LAYER["envs"]  # one layer: neither may import the other


def test_architecture_doc_states_the_rule():
    doc = (ROOT.parent.parent / "docs" / "architecture.md").read_text()
    for name in LAYER:
        if name != "core":
            assert f"`{name}`" in doc, name
