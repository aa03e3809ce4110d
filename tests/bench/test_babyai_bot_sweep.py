"""bench/babyai_bot_sweep.py: which levels the bot plays, and how it fails on the others."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def test_sweep_finds_the_level_the_bot_cannot_play(load_bench, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    sweep = load_bench("babyai_bot_sweep.py")
    assert sweep.main(["--seeds", "2", "--levels", "GoToLocal,KeyInBox", "--json", str(tmp_path / "s.json")]) == 0
    result = json.loads((tmp_path / "s.json").read_text())
    assert result["not_all_solved"] == ["KeyInBox"]
    rows = {r["level"]: r for r in result["levels"]}
    assert rows["GoToLocal"]["solved"] == 2 and rows["GoToLocal"]["mean_steps_solved"] > 0
    assert rows["KeyInBox"]["solved"] == 0 and sum(rows["KeyInBox"]["failures"].values()) == 2
    assert all(k.startswith("error: AssertionError") for k in rows["KeyInBox"]["failures"])
    assert "KeyInBox" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        sweep.main(["--seeds", "0"])
