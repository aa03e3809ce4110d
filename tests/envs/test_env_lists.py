"""Env lists: comma-separated names and suite files, canonicalised, expanded, checked (no env is built here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vlafoundry.envs import MT10_TASKS, canonical_name, env_family, env_slug, expand_env_names, get_family, make_env
from vlafoundry.envs.names import read_suite_file, split_env_list

PAIR = "metaworld/handle-press,metaworld/coffee-push"
PAIR_TASKS = ["metaworld/handle-press", "metaworld/coffee-push"]


def test_comma_list_is_canonicalised_and_expanded() -> None:
    assert expand_env_names(PAIR) == PAIR_TASKS
    assert expand_env_names(" MetaWorld/handle-press-v3 ,metaworld/coffee-push ") == PAIR_TASKS
    assert canonical_name("metaworld/handle-press-v3, metaworld/coffee-push") == PAIR
    assert expand_env_names(canonical_name(PAIR)) == PAIR_TASKS  # the recorded name re-expands to the same tasks
    assert expand_env_names(["metaworld/mt10"]) == [f"metaworld/{t}" for t in MT10_TASKS]
    assert canonical_name(["metaworld/push"]) == "metaworld/push"  # a one-entry list is that name
    assert canonical_name("metaworld/mt10,metaworld/handle-press") == "metaworld/mt10,metaworld/handle-press"
    assert len(expand_env_names("metaworld/mt10,metaworld/handle-press")) == 11
    assert env_family(PAIR) == "metaworld" and get_family(PAIR).name == "metaworld"
    assert expand_env_names("babyai/GoToLocal,babyai/PickupLoc") == ["babyai/GoToLocal", "babyai/PickupLoc"]


@pytest.mark.parametrize(("name", "match"), [
    ("metaworld/push,metaworld/push-v3", r"each task once, got metaworld/push \(from 'metaworld/push' and "),
    ("metaworld/mt10,metaworld/reach", "from 'metaworld/mt10' and 'metaworld/reach'"),
    ("babyai/GoToLocal,metaworld/push", r"one family, got babyai \('babyai/GoToLocal'\) and metaworld"),
    ("metaworld/push,,metaworld/reach", "an empty entry"),
    ("metaworld/push,metaworld/not-a-task", "unknown Meta-World task 'not-a-task'"),
    ("metaworld/push,reach", "expected '<family>/<task>' entries, got 'reach'"),
])
def test_bad_lists_are_refused_naming_the_problem(name: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        expand_env_names(name)


def test_one_env_per_task() -> None:
    with pytest.raises(ValueError, match="expected one '<family>/<task>' name, got the env list"):
        make_env(PAIR)


def test_suite_files(tmp_path: Path) -> None:
    txt = tmp_path / "tasks.txt"
    txt.write_text("# my two tasks\nmetaworld/handle-press\n\nmetaworld/coffee-push-v3  # the v3 suffix is fine\n")
    yaml_list = tmp_path / "tasks.yaml"
    yaml_list.write_text("- metaworld/handle-press\n- metaworld/coffee-push\n")
    yaml_map = tmp_path / "suite.yml"
    yaml_map.write_text("description: two tasks outside MT10\ntasks: [metaworld/handle-press, metaworld/coffee-push]\n")
    for path in (txt, yaml_list, yaml_map):
        assert expand_env_names(str(path)) == PAIR_TASKS
        assert canonical_name(str(path)) == PAIR  # the file's names, not its path: no file needed later
        assert get_family(str(path)).name == "metaworld"
    assert read_suite_file(txt) == ["metaworld/handle-press", "metaworld/coffee-push-v3"]
    assert split_env_list([str(txt), "metaworld/reach"])[-1] == "metaworld/reach"


@pytest.mark.parametrize(("text", "match"), [
    ("tasks: metaworld/push\n", "expected a list of env names, got str"),
    ("envs: [metaworld/push]\n", r"keys \['description', 'tasks'\] \('tasks' required\), got keys \['envs'\]"),
    ("[]\n", "at least one env name"),
    ("- metaworld/push\n- other.yaml\n", "not other suite files"),
    ("- [metaworld/push]\n", "expected env names"),
    ("- metaworld/push\n  bad: [\n", "invalid YAML"),
])
def test_bad_suite_files_are_refused(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "suite.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        expand_env_names(str(path))


def test_missing_suite_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"suite file '.*nope.yaml': expected a readable file"):
        expand_env_names(str(tmp_path / "nope.yaml"))


def test_slugs_are_short_safe_and_deterministic() -> None:
    assert env_slug("babyai/GoToLocal") == "babyai-gotolocal"  # single names keep their old slug
    assert env_slug("metaworld/mt10") == "metaworld-mt10"
    slug = env_slug(PAIR)
    assert slug == env_slug("metaworld/handle-press-v3, metaworld/coffee-push") and slug.startswith("metaworld-handle-press-and-1-more-")
    assert slug != env_slug("metaworld/coffee-push,metaworld/handle-press")  # order matters (task ids follow it)
    many = ",".join(f"metaworld/{t}" for t in list(MT10_TASKS)[::-1])
    assert len(env_slug(many)) <= 64 and all(c.isalnum() or c == "-" for c in env_slug(many))


def test_unknown_babyai_level_suggests_the_name_the_cli_takes():
    """Gym's own hint names the gym id (`BabyAI-BossLevel`); the CLI takes `babyai/BossLevel`."""
    with pytest.raises(ValueError, match=r"unknown BabyAI level 'babyai/BossLevl'; did you mean 'babyai/BossLevel'\?$"):
        expand_env_names("babyai/BossLevl")
    with pytest.raises(ValueError, match=r"did you mean 'babyai/GoToLocal'\?") as info:
        make_env("babyai/GoToLokal")
    assert "BabyAI-" not in str(info.value)
