"""Paraphrase files: format, matching, rewriting, and clear errors for bad files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vlafoundry.eval.paraphrase import ParaphraseMap, load_paraphrases
from vlafoundry.eval.rollout import evaluate_policy


def _write(tmp_path, obj, raw: str | None = None):
    p = tmp_path / "para.json"
    p.write_text(raw if raw is not None else json.dumps(obj), encoding="utf-8")
    return p


def test_load_and_rewrite(tmp_path):
    p = _write(tmp_path, {
        "# comment": "ignored",
        "go to the {color} {object}": ["walk to the {color} {object}", "find the {object} that is {color}"],
        "go to a {object}": ["approach any {object}"],
        "Reach  the goal": ["move the gripper to the target"],
        "put the {color} {object} next to the {color2} {object2}": ["place the {color} {object} by the {color2} {object2}"],
    })  # fmt: skip
    pm = load_paraphrases(p)
    assert len(pm) == 4 and pm.source == str(p)
    assert pm.rewrite("go to the red ball", choice=0) == "walk to the red ball"
    assert pm.rewrite("go to the red ball", choice=1) == "find the ball that is red"
    assert pm.rewrite("go to the red ball", choice=3) == "find the ball that is red"  # choice wraps around
    assert pm.rewrite("Go to  a key") == "approach any key"
    assert pm.rewrite("reach the goal") == "move the gripper to the target"  # exact, case/space-insensitive
    assert pm.rewrite("put the red ball next to the blue key") == "place the red ball by the blue key"
    assert pm.rewrite("go to the pink ball") is None  # pink is not a BabyAI colour
    assert pm.rewrite("pick up the red ball") is None
    assert pm("pick up the red ball") == "pick up the red ball"


def test_repeated_placeholder_must_match_same_value():
    pm = ParaphraseMap.from_mapping({"put the {object} next to the {object}": ["pair the {object}s"]})
    assert pm.rewrite("put the ball next to the ball") == "pair the balls"
    assert pm.rewrite("put the ball next to the key") is None


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ('{"go to the {color} ball": ["x",]', r"invalid JSON at line 1"),
        ('["go to the ball"]', r"expected a JSON object .* found list"),
        ('{"go to the ball": "walk to the ball"}', r"key 'go to the ball': expected a list of alternative strings, found str"),
        ('{"go to the ball": []}', r"key 'go to the ball': expected a non-empty list of alternatives, found \[\]"),
        ('{"go to the ball": ["ok", 3]}', r"key 'go to the ball': alternative 1: expected a string, found int"),
        ('{"go to the ball": ["  "]}', r"key 'go to the ball': alternative 0: expected non-empty text"),
        ('{"go to the {size} ball": ["x"]}', r"key 'go to the \{size\} ball': unknown placeholder '\{size\}'"),
        ('{"go to the {color} ball": ["go to the {object}"]}', r"uses placeholder\(s\) \['\{object\}'\]"),
        ('{"go to the {color ball": ["x"]}', r"malformed placeholder braces"),
        ('{"": ["x"]}', r"key '': expected a non-empty string"),
    ],
)
def test_bad_files_raise_clear_errors(tmp_path, content, match):
    p = _write(tmp_path, None, raw=content)
    with pytest.raises(ValueError, match=match) as info:
        load_paraphrases(p)
    assert str(p) in str(info.value)  # the message names the file


def test_missing_file(tmp_path):
    with pytest.raises(ValueError, match="cannot read paraphrase file"):
        load_paraphrases(tmp_path / "nope.json")


class _Recorder:
    def __init__(self):
        self.instructions: list[str] = []
        self.rng = np.random.default_rng(0)

    def reset(self, env_indices=None):
        pass

    def select_action(self, obs):
        self.instructions.extend(obs["instruction"])
        return self.rng.integers(0, 3, size=len(obs["instruction"]))


def test_rollout_uses_paraphrases():
    pm = ParaphraseMap.from_mapping({
        "go to the {color} {object}": ["walk over to the {color} {object}"],
        "go to a {color} {object}": ["walk over to some {color} {object}"],
        "go to the {object}": ["walk over to the {object}"],
        "go to a {object}": ["walk over to some {object}"],
    })  # fmt: skip
    pol = _Recorder()
    res = evaluate_policy(pol, "babyai/GoToLocal", episodes=4, num_envs=4, paraphrases=pm)
    assert res.summary["paraphrased_fraction"] == 1.0
    assert all(s.startswith("walk over to ") for s in pol.instructions)
    for e in res.episodes:
        assert e["paraphrased"] and e["policy_instruction"] == pm.rewrite(e["instruction"], e["seed"])
        assert e["instruction"].startswith("go to ")  # the original is kept for subgroup analysis
