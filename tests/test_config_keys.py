"""Every config key is read by the code it configures: a key that is validated and never read is a lie.

The check walks every dataclass reachable from :class:`ExperimentConfig` (sections, nested sections, inherited
fields) and looks for a *read* of each field in ``src/vlafoundry`` with :mod:`ast`. The heuristic, precisely:

* a read is an attribute load ``R.field`` (or ``getattr(R, "field")``, or ``getattr(R, n)`` with ``n`` running over
  a literal tuple/list of strings holding ``"field"``, or ``_cfg_get(x, "section", "field")`` on a config dict)
  whose receiver ``R`` is known to hold that field's dataclass;
* the receiver is known by the last name in its expression: a section's own field name (``cfg.data.env``,
  ``self.cfg.train.lr``: ``data``, ``train``), a name in :data:`RECEIVERS` (the few variables this code base uses for
  config objects, e.g. ``opt_cfg``, ``lc``), or a local alias assigned from one of those in the same module
  (``data = cfg.data``; ``lc, p = self.loss_cfg, self.policy``), or ``self`` in a config dataclass's own methods;
* string loops count when the strings are literal: ``for n in ("a", "b")`` or a module-level tuple of strings
  (``for m in MODALITIES: getattr(md, m)``);
* reads inside a config dataclass's own ``__post_init__`` (validation) do not count, nor does anything in the
  generic machinery of ``vlafoundry/config.py`` (which handles every field the same way);
* an argparse namespace (``args.workers``) or an unrelated object with a same-named attribute is not a config
  receiver, so it does not count either.

So the test fails on a field no code reads through a config object. It cannot tell whether a read value then
matters (a read into a dead variable passes), and a read through a variable name not in :data:`RECEIVERS` is
missed (then add the name, after checking it holds that config).
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path
from typing import get_type_hints

import pytest

from vlafoundry.models.config import ModelConfig
from vlafoundry.models.registry import policy_class, policy_types
from vlafoundry.train.config import ExperimentConfig, OptimConfig, PretrainConfig, TrainConfig

SRC = Path(__file__).resolve().parents[1] / "src" / "vlafoundry"
GENERIC = {SRC / "config.py"}

#: keys wired by someone else right now; each entry must still be unread (checked below), so it cannot go stale
ALLOWED_UNREAD: set[str] = set()


def _concrete(tp: type) -> list[type]:
    """The dataclasses a section annotated ``tp`` can hold: ``tp`` itself, or for a section whose class depends on
    its values (``model``, by ``model.type``) the config class of every registered policy type."""
    if hasattr(tp, "config_class_for"):
        return sorted({policy_class(name).config_class for name in policy_types()}, key=lambda c: c.__name__)
    return [tp]


def _sections() -> dict[str, list[type]]:
    """Dotted section path -> its dataclasses, for every dataclass reachable from ExperimentConfig ("" is the
    root)."""
    out: dict[str, list[type]] = {}

    def walk(classes: list[type], prefix: str) -> None:
        out[prefix] = classes
        for cls in classes:
            hints = get_type_hints(cls)
            for f in dataclasses.fields(cls):
                if dataclasses.is_dataclass(hints[f.name]):
                    walk(_concrete(hints[f.name]), f"{prefix}.{f.name}" if prefix else f.name)

    walk([ExperimentConfig], "")
    return out


SECTIONS = _sections()
MODEL_CLASSES = {ModelConfig, *SECTIONS["model"]}
CONFIG_CLASSES = {c for classes in SECTIONS.values() for c in classes} | {OptimConfig, ModelConfig}
#: variable / attribute names that hold config objects in this code base (besides the section names themselves)
RECEIVERS: dict[str, set[type]] = {
    "cfg": {ExperimentConfig, *MODEL_CLASSES},  # ExperimentConfig in train/cli/eval, a model config in models
    "opt": {OptimConfig, TrainConfig, PretrainConfig},
    "opt_cfg": {OptimConfig, TrainConfig, PretrainConfig},
    "loss_cfg": set(SECTIONS["loss"]),
    "lc": set(SECTIONS["loss"]),
}


def _classes_for(name: str) -> set[type]:
    found = set(RECEIVERS.get(name, set()))
    for path, classes in SECTIONS.items():
        if path and path.rsplit(".", 1)[-1] == name:
            found.update(classes)
    return found


def _last_name(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


class _Reads(ast.NodeVisitor):
    """Collect (dataclass, field) reads of one module."""

    def __init__(self, aliases: dict[str, set[type]], constants: dict[str, list[str]] | None = None) -> None:
        self.aliases = aliases
        self.constants = constants or {}
        self.reads: set[tuple[type, str]] = set()
        self.pending: list[tuple[set[type], str]] = []  # getattr(R, name_variable) seen inside a string loop
        self.class_stack: list[str] = []
        self.skip = 0

    def receiver(self, node: ast.AST) -> set[type]:
        name = _last_name(node)
        if name is None:
            return set()
        found = _classes_for(name)
        if isinstance(node, ast.Name):
            found |= self.aliases.get(name, set())
            if name == "self" and self.class_stack:  # a config dataclass's own methods (dataset_dir, ...)
                found |= {c for c in CONFIG_CLASSES if c.__name__ == self.class_stack[-1]}
        return found

    def add(self, classes: set[type], field: str) -> None:
        if not self.skip:
            for cls in classes:
                self.reads.add((cls, field))

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self.class_stack.append(node.name)
        self.generic_visit(node)
        self.class_stack.pop()

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        validation = (node.name == "__post_init__" and bool(self.class_stack)
                      and self.class_stack[-1] in {c.__name__ for c in CONFIG_CLASSES})
        self.skip += bool(validation)
        self.generic_visit(node)
        self.skip -= bool(validation)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if isinstance(node.ctx, ast.Load):
            self.add(self.receiver(node.value), node.attr)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        fn = _last_name(node.func)
        strings = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
        if fn == "getattr" and len(node.args) >= 2:
            classes = self.receiver(node.args[0])
            if strings:
                self.add(classes, strings[0])
            elif isinstance(node.args[1], ast.Name):
                self.pending.append((classes, node.args[1].id))
        if fn == "_cfg_get" and len(strings) >= 2:
            self.add(set(SECTIONS.get(".".join(strings[:-1]), [])), strings[-1])
        self.generic_visit(node)

    def visit_comprehension_or_for(self, target: ast.AST, iterable: ast.AST, body: list[ast.AST]) -> None:
        if isinstance(iterable, ast.Name) and iterable.id in self.constants:
            names = self.constants[iterable.id]  # for m in MODALITIES: getattr(md, m)
        elif isinstance(iterable, (ast.Tuple, ast.List)):
            names = [e.value for e in iterable.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
        else:
            names = []
        if isinstance(target, ast.Name) and names:
            self.pending = []
            for b in body:
                self.visit(b)
            for classes, var in self.pending:
                if var == target.id:
                    for n in names:
                        self.add(classes, n)
            self.pending = []
        else:
            for b in body:
                self.visit(b)

    def visit_For(self, node: ast.For) -> None:
        self.visit(node.iter)
        self.visit_comprehension_or_for(node.target, node.iter, [*node.body, *node.orelse])

    def _visit_comp(self, node: ast.AST, elts: list[ast.AST]) -> None:
        gens = node.generators  # type: ignore[attr-defined]
        for g in gens:
            self.visit(g.iter)
            for cond in g.ifs:
                self.visit(cond)
        if len(gens) == 1:
            self.visit_comprehension_or_for(gens[0].target, gens[0].iter, elts)
        else:
            for e in elts:
                self.visit(e)

    def visit_GeneratorExp(self, node: ast.GeneratorExp) -> None:
        self._visit_comp(node, [node.elt])

    visit_ListComp = visit_SetComp = visit_GeneratorExp

    def visit_DictComp(self, node: ast.DictComp) -> None:
        self._visit_comp(node, [node.key, node.value])


def _aliases(tree: ast.AST) -> dict[str, set[type]]:
    """Names assigned from a config receiver anywhere in the module (``data = cfg.data``; tuple assignments)."""
    probe = _Reads({})
    out: dict[str, set[type]] = {}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Assign):
            continue
        for target in node.targets:
            pairs = []
            if isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple):
                pairs = list(zip(target.elts, node.value.elts))
            else:
                pairs = [(target, node.value)]
            for t, v in pairs:
                if isinstance(t, ast.Name):
                    classes = probe.receiver(v)
                    if classes:
                        out.setdefault(t.id, set()).update(classes)
    return out


def _constants(tree: ast.Module) -> dict[str, list[str]]:
    """Module-level ``NAME = ("a", "b")`` tuples/lists of strings (iterated with getattr)."""
    out = {}
    for node in tree.body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                and isinstance(node.value, (ast.Tuple, ast.List))
                and all(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.value.elts)):
            out[node.targets[0].id] = [e.value for e in node.value.elts]
    return out


def _all_reads() -> set[tuple[type, str]]:
    reads: set[tuple[type, str]] = set()
    for path in sorted(SRC.rglob("*.py")):
        if path in GENERIC:
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        visitor = _Reads(_aliases(tree), _constants(tree))
        visitor.visit(tree)
        reads |= visitor.reads
    return reads


def _keys() -> list[tuple[str, type, str]]:
    """(dotted key, its dataclass, field name) for every leaf field; a key of a section with several classes
    (``model``) is listed once per class that has it, labelled with the class (``model.dropout (PolicyConfig)``)."""
    out = []
    for path, classes in SECTIONS.items():
        for cls in classes:
            hints = get_type_hints(cls)
            for f in dataclasses.fields(cls):
                if dataclasses.is_dataclass(hints[f.name]):
                    continue
                key = f"{path}.{f.name}" if path else f.name
                out.append((key if len(classes) == 1 else f"{key} ({cls.__name__})", cls, f.name))
    return out


def _readers(cls: type) -> set[type]:
    """A field of ``cls`` is read through ``cls`` itself or a base class that declares it (OptimConfig)."""
    return {c for c in cls.__mro__ if dataclasses.is_dataclass(c)}


@pytest.fixture(scope="module")
def reads() -> set[tuple[type, str]]:
    return _all_reads()


def test_every_config_key_is_read(reads) -> None:
    unread = [key for key, cls, name in _keys()
              if key not in ALLOWED_UNREAD and not any((c, name) in reads for c in _readers(cls))]
    assert not unread, (f"config keys that no code reads (validated and ignored): {unread}; wire them or remove "
                        "them (dataclass, presets, docs)")


def test_allow_list_is_not_stale(reads) -> None:
    keys = {key: (cls, name) for key, cls, name in _keys()}
    missing = sorted(ALLOWED_UNREAD - set(keys))
    assert not missing, f"ALLOWED_UNREAD names keys that do not exist: {missing}"
    now_read = sorted(k for k in ALLOWED_UNREAD if any((c, keys[k][1]) in reads for c in _readers(keys[k][0])))
    assert not now_read, f"these keys are read now; remove them from ALLOWED_UNREAD: {now_read}"


def test_heuristic_sees_known_reads_and_misses(reads, tmp_path) -> None:
    """The scanner itself: known reads in the tree are found, and a field only validated is not."""
    (data,), (train,), (loss,) = SECTIONS["data"], SECTIONS["train"], SECTIONS["loss"]
    assert (data, "val_fraction") in reads  # data = cfg.data; data.val_fraction (alias) and cfg.data.val_fraction
    assert (OptimConfig, "grad_clip") in reads or (train, "grad_clip") in reads  # opt.grad_clip
    assert (loss, "mlm") in reads  # lc.mlm
    src = ("class DataConfig:\n    def __post_init__(self):\n        require(self.ghost >= 0)\n"
           "def f(args, cfg):\n    return args.ghost2, cfg.data.real, getattr(cfg.train, 'real2')\n"
           "def g(lc):\n    return [getattr(lc, n) for n in ('real3',)]\n")
    visitor = _Reads({})
    visitor.visit(ast.parse(src))
    found = {name for _, name in visitor.reads}
    assert {"real", "real2", "real3"} <= found and not {"ghost", "ghost2"} & found, found
