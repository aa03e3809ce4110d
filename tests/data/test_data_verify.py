"""verify_dataset detects corruption and truncation, naming the file; inspect summarises."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from vlafoundry.data import inspect_dataset, verify_dataset

MAIN = "minari/vlafoundry/babyai-gotolocal-v0/data/main_data.hdf5"


@pytest.fixture()
def copy(babyai_root: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(babyai_root, dst)
    return dst


def _flip_bit(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_clean_dataset_verifies(babyai_root: Path) -> None:
    assert verify_dataset(babyai_root) == []


def test_bit_flip_in_minari_file(copy: Path) -> None:
    path = copy / MAIN
    _flip_bit(path, path.stat().st_size // 2)
    problems = verify_dataset(copy)
    assert problems and any(p.startswith(MAIN) and "corrupted" in p for p in problems), problems


def test_truncated_minari_file(copy: Path) -> None:
    path = copy / MAIN
    path.write_bytes(path.read_bytes()[:-100])
    problems = verify_dataset(copy)
    assert any(p.startswith(MAIN) and "truncated" in p for p in problems), problems


def test_bit_flip_and_truncation_in_cache(copy: Path) -> None:
    _flip_bit(copy / "cache" / "image.zlib", 500)
    (copy / "cache" / "action.npy").write_bytes((copy / "cache" / "action.npy").read_bytes()[:-8])
    problems = verify_dataset(copy)
    assert any(p.startswith("cache/image.zlib") and "corrupted" in p for p in problems), problems
    assert any(p.startswith("cache/action.npy") and "truncated" in p for p in problems), problems


def test_missing_extra_and_metadata_problems(copy: Path) -> None:
    (copy / "minari" / "vlafoundry" / "babyai-gotolocal-v0" / "data" / "metadata.json").unlink()
    (copy / "minari" / "stray.bin").write_bytes(b"x")
    problems = verify_dataset(copy)
    assert any("metadata.json: missing" in p for p in problems) and any("stray.bin: unexpected" in p for p in problems)
    (copy / "vlafoundry.json").write_text("{not json")
    assert "not valid JSON" in verify_dataset(copy)[0]
    (copy / "vlafoundry.json").unlink()
    assert "missing" in verify_dataset(copy)[0]


def test_inspect_summary(babyai_root: Path) -> None:
    text = inspect_dataset(babyai_root)
    assert "babyai/GoToLocal" in text and "episodes     8" in text and "vlafoundry/babyai-gotolocal-v0" in text
