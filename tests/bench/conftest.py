"""Shared fixture of the bench/ script tests: import a script from ``bench/`` as a module."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="module")
def load_bench() -> Iterator[Callable[[str], ModuleType]]:
    """``load_bench("ablations.py")`` -> the script as module ``bench_ablations``, registered in ``sys.modules``
    (dataclasses look their module up there) until the test module ends."""
    names: list[str] = []

    def load(filename: str) -> ModuleType:
        name = "bench_" + Path(filename).stem
        spec = importlib.util.spec_from_file_location(name, BENCH / filename)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        names.append(name)
        spec.loader.exec_module(module)
        return module

    yield load
    for name in names:
        sys.modules.pop(name, None)
