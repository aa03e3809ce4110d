"""``vlafoundry data generate | inspect | verify`` through the real CLI entry point."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from vlafoundry.cli.main import main


def test_generate_inspect_verify(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ds"
    rc = main(["data", "generate", "babyai/GoToLocal", "--episodes", "4", "--out", str(out), "--workers", "2",
               "--seed", "3", "--no-progress"])
    assert rc == 0 and "wrote 4 episodes" in capsys.readouterr().out
    assert main(["data", "inspect", str(out)]) == 0
    assert "episodes     4" in capsys.readouterr().out
    assert main(["data", "verify", str(out)]) == 0
    assert "OK" in capsys.readouterr().out
    # refuses to overwrite, then overwrites when asked
    assert main(["data", "generate", "babyai/GoToLocal", "--episodes", "2", "--out", str(out), "--no-progress"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["data", "generate", "babyai/GoToLocal", "--episodes", "2", "--out", str(out), "--no-progress",
                 "--overwrite"]) == 0
    capsys.readouterr()
    # a damaged file makes verify fail with the file named
    main_file = next(out.rglob("main_data.hdf5"))
    main_file.write_bytes(main_file.read_bytes()[:-1])
    assert main(["data", "verify", str(out)]) == 1
    assert "main_data.hdf5" in capsys.readouterr().err


def test_python_dash_m_entry_point(tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "vlafoundry", "data", "verify", str(tmp_path)], capture_output=True, text=True)
    assert res.returncode == 1 and "vlafoundry.json: missing" in res.stderr
    res = subprocess.run([sys.executable, "-m", "vlafoundry", "data", "generate", "--help"], capture_output=True, text=True)
    assert res.returncode == 0 and "--episodes" in res.stdout and "--max-steps" in res.stdout


def test_generate_hold_out_pairs_flag(tmp_path):
    """`vlafoundry data generate --hold-out-pairs` reaches the generator: recorded in the metadata, no mission names a
    held-out pair."""
    import json

    from vlafoundry.cli.main import main

    out = tmp_path / "ds"
    rc = main(["data", "generate", "babyai/GoToLocal", "--episodes", "12", "--out", str(out), "--no-progress",
               "--hold-out-pairs", "red ball,green key"])
    assert rc == 0
    meta = json.loads((out / "vlafoundry.json").read_text())
    assert sorted(meta["generation"]["hold_out_pairs"]) == ["green key", "red ball"]
    from vlafoundry.data import DemoDataset

    missions = set(DemoDataset(out, split="all").instructions)
    assert not any("red ball" in m or "green key" in m for m in missions), missions
