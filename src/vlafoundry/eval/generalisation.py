"""The language generalisation suite (``vlafoundry eval --generalisation``).

Three probes, each reported as closed-loop success with its 95% Wilson interval beside the in-distribution
success of the same policy on the same (or, for held-out pairs, the same range of) seeds:

* **paraphrases**: the episodes of the closed-loop run, with every instruction rewritten by the paraphrase file
  shipped for the env family (:func:`shipped_paraphrases`; ``--paraphrases FILE`` replaces it). In-distribution: the
  closed-loop run itself (same seeds, original instructions).
* **held-out pairs** (BabyAI): when the training data held colour-object pairs out (``data.hold_out_pairs``,
  recorded in the dataset metadata), episodes whose mission names one of those pairs, found by scanning seeds from
  the evaluation's first seed. In-distribution: as many episodes of the same kind whose mission names colour-object
  pairs but no held-out one, scanned from the same first seed and matched to the held-out episodes by mission
  template and target object type (:func:`mission_kind`), so the two rates differ only in whether the pair was
  trained (an unmatched control would, e.g. for a held-out ``red ball`` alone, compare ball missions with missions
  of every object type). The per-pair success is in the row's note.
* **held-out template** (BabyAI ``go to ...`` levels): missions ``go to a/the {color} {object}`` rewritten in the
  colour-less form of other levels, ``go to the {object}``, on the seeds where the target is the only object of its
  type in the room (so the rewrite names the same object and the env's own success check still applies). The
  policy needs no skill it lacks. In-distribution: the same seeds with the original missions.

Seed scanning resets envs in this process (a few ms a reset); it stops after ``MAX_SCAN_FACTOR`` seeds per wanted
episode and says how many it found.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from vlafoundry.eval.paraphrase import ParaphraseMap, load_paraphrases
from vlafoundry.eval.stats import wilson_interval

__all__ = [
    "PROBES",
    "TEMPLATE_REWRITE",
    "ProbeResult",
    "held_out_pairs_of",
    "mission_kind",
    "per_phrasing",
    "run_generalisation",
    "scan_seeds",
    "shipped_paraphrases",
    "unique_target",
]

PROBES: tuple[str, ...] = ("paraphrases", "held-out pairs", "held-out template")
MAX_SCAN_FACTOR = 40  # seeds scanned per wanted episode at most
#: the held-out template probe: GoToLocal-style missions in the colour-less form of other levels
TEMPLATE_REWRITE: dict[str, list[str]] = {"go to {article} {color} {object}": ["go to the {object}"]}
_SHIPPED = {"babyai": "babyai.json", "metaworld": "metaworld-mt10-unseen.json"}

Log = Callable[[str], None]


@dataclass
class ProbeResult:
    """One probe: its success and the in-distribution success it is compared with."""

    probe: str
    detail: str
    episodes: int
    successes: int
    in_dist_episodes: int
    in_dist_successes: int
    rewritten_fraction: float = 1.0
    note: str = ""
    per_phrasing: dict[str, list[int]] = field(default_factory=dict)  # alternative -> [successes, episodes]

    @property
    def success_rate(self) -> float:
        return self.successes / self.episodes if self.episodes else 0.0

    @property
    def in_dist_rate(self) -> float:
        return self.in_dist_successes / self.in_dist_episodes if self.in_dist_episodes else 0.0

    def to_dict(self) -> dict[str, Any]:
        lo, hi = wilson_interval(self.successes, self.episodes)
        ilo, ihi = wilson_interval(self.in_dist_successes, self.in_dist_episodes)
        return {**asdict(self), "success_rate": self.success_rate, "ci_low": float(lo), "ci_high": float(hi),
                "in_dist_rate": self.in_dist_rate, "in_dist_ci_low": float(ilo), "in_dist_ci_high": float(ihi),
                "delta": self.success_rate - self.in_dist_rate}  # fmt: skip

    def line(self) -> str:
        d = self.to_dict()
        return (f"  {self.probe:<18} {d['success_rate']:.3f} [{d['ci_low']:.3f}, {d['ci_high']:.3f}] "
                f"({self.episodes} ep)  in-distribution {d['in_dist_rate']:.3f} [{d['in_dist_ci_low']:.3f}, "
                f"{d['in_dist_ci_high']:.3f}] ({self.in_dist_episodes} ep)  Δ {d['delta']:+.3f}  {self.detail}"
                + self._phrasing_range())

    def _phrasing_range(self) -> str:
        rates = [s / n for s, n in self.per_phrasing.values() if n]
        if len(rates) < 2:
            return ""
        return f"; per phrasing {min(rates):.3f} to {max(rates):.3f} ({len(rates)} phrasings)"


def shipped_paraphrases(family: str) -> Path | None:
    """The paraphrase file shipped for an env family (``vlafoundry/eval/paraphrases/``), or None."""
    name = _SHIPPED.get(family)
    if name is None:
        return None
    path = Path(str(resources.files("vlafoundry.eval") / "paraphrases" / name))
    return path if path.is_file() else None


def held_out_pairs_of(cfg: Any) -> list[str]:
    """The colour-object pairs the training data held out: the dataset metadata's ``generation.hold_out_pairs``
    when the dataset is on disk, else the config's ``data.hold_out_pairs``."""
    from vlafoundry.data import META_FILE
    from vlafoundry.io import read_json

    data = getattr(cfg, "data", None)
    root = data.dataset_dir() if data is not None and hasattr(data, "dataset_dir") else None
    if root is not None and (Path(root) / META_FILE).is_file():
        return list(read_json(Path(root) / META_FILE).get("generation", {}).get("hold_out_pairs", []) or [])
    return list(getattr(data, "hold_out_pairs", []) or [])


def scan_seeds(env_name: str, env_kwargs: dict[str, Any], start: int, count: int,
               keep: Callable[[Any, dict[str, Any]], bool], max_scan: int) -> list[int]:  # fmt: skip
    """The first ``count`` seeds from ``start`` whose reset ``keep(env, obs)`` accepts (at most ``max_scan``
    scanned)."""
    from vlafoundry.envs import make_env

    env = make_env(env_name, **env_kwargs)
    found: list[int] = []
    try:
        for seed in range(start, start + max_scan):
            if keep(env, env.reset(seed=seed)):
                found.append(seed)
                if len(found) == count:
                    break
    finally:
        env.close()
    return found


def unique_target(env: Any, obs: dict[str, Any]) -> bool:
    """Whether the mission matches :data:`TEMPLATE_REWRITE` and its target is the only object of its type."""
    found = _TEMPLATE_MAP.alternatives(str(obs["instruction"]))
    if found is None:
        return False
    target = found[1]["object"]
    grid = getattr(getattr(env, "unwrapped", None), "grid", None)
    if grid is None:
        return False
    return sum(1 for o in grid.grid if o is not None and o.type == target) == 1


_TEMPLATE_MAP = ParaphraseMap.from_mapping(TEMPLATE_REWRITE, source="held-out template")


def _pairs_named(instruction: str, pairs: Sequence[str]) -> bool:
    from vlafoundry.data.generate import held_out_in

    return held_out_in(instruction, pairs) is not None


def mission_kind(instruction: str) -> tuple[str, str]:
    """``(template, object type)`` of a BabyAI mission (``("go to the {color} {object}", "ball")``): what the
    held-out pairs' in-distribution control matches on."""
    from vlafoundry.envs.babyai_missions import mission_subgroups

    g = mission_subgroups(instruction)
    return g["template"], g["object"]


def _per_pair(records: Sequence[dict[str, Any]], pairs: Sequence[str]) -> str:
    from vlafoundry.data.generate import held_out_in

    cells: dict[str, list[int]] = {p: [0, 0] for p in pairs}
    for r in records:
        p = held_out_in(r["instruction"], pairs)
        if p is not None:
            cells[p][0] += int(bool(r["success"]))
            cells[p][1] += 1
    return ", ".join(f"{p} {s / n:.3f} ({n} ep)" if n else f"{p} - (0 ep)" for p, (s, n) in cells.items())


def _held_out_and_matched_jobs(names: Sequence[str], env_kwargs: dict[str, Any], start: int, episodes: int,
                               pairs: Sequence[str]) -> tuple[list[tuple[str, int, int]], list[tuple[str, int, int]], str]:  # fmt: skip
    """Per env: the first ``episodes`` seeds whose mission names a held-out pair, and as many seeds whose mission
    names colour-object pairs, none held out, with the same count per :func:`mission_kind` (both from ``start``)."""
    from vlafoundry.data.generate import mission_pairs

    held: list[tuple[str, int, int]] = []
    ctrl: list[tuple[str, int, int]] = []
    short = []
    limit = MAX_SCAN_FACTOR * episodes
    for t, name in enumerate(names):
        kinds: dict[int, tuple[str, str]] = {}

        def named(env: Any, o: dict[str, Any], kinds: dict[int, tuple[str, str]] = kinds) -> bool:
            if not _pairs_named(o["instruction"], pairs):
                return False
            kinds[len(kinds)] = mission_kind(o["instruction"])
            return True

        seeds = scan_seeds(name, env_kwargs, start, episodes, named, limit)
        held.extend((name, s, t * episodes + i) for i, s in enumerate(seeds))
        if len(seeds) < episodes:
            short.append(f"{name}: {len(seeds)} of {episodes} episodes found in {limit} seeds")
        quota: dict[tuple[str, str], int] = {}
        for k in kinds.values():
            quota[k] = quota.get(k, 0) + 1

        def trained(env: Any, o: dict[str, Any], quota: dict[tuple[str, str], int] = quota) -> bool:
            text = o["instruction"]
            k = mission_kind(text)
            if quota.get(k, 0) <= 0 or not mission_pairs(text) or _pairs_named(text, pairs):
                return False
            quota[k] -= 1
            return True

        matched = scan_seeds(name, env_kwargs, start, len(seeds), trained, limit) if seeds else []
        ctrl.extend((name, s, t * episodes + i) for i, s in enumerate(matched))
        if len(matched) < len(seeds):
            short.append(f"{name}: {len(matched)} of {len(seeds)} matched in-distribution episodes found in "
                         f"{limit} seeds")
    return held, ctrl, "; ".join(short)


def run_generalisation(policy: Any, names: Sequence[str], pool: Any, closed_loop: Any, *, episodes: int,
                       cfg: Any = None, paraphrases: ParaphraseMap | None = None, paraphrased: Any = None,
                       max_steps: int | None = None, log: Log = print) -> tuple[list[ProbeResult], list[str]]:
    """Run the three probes (module docstring) on the open ``pool`` (a :class:`~vlafoundry.eval.rollout.
    VectorRollout`) after the ``closed_loop`` run (an ``EvalResult``, whose seeds the probes reuse).

    ``paraphrases`` / ``paraphrased``: a paraphrase map given by the user and its already-run result (reused);
    None: the family's shipped file. Returns the probe results and notes on probes that could not run.
    """
    from vlafoundry.envs import get_family
    from vlafoundry.eval.rollout import summarize_episodes

    notes: list[str] = []
    rows: list[ProbeResult] = []
    family = get_family(names[0]).name
    seed_start = int(closed_loop.config["seed_start"])
    env_kwargs = dict(pool.env_kwargs)
    base = closed_loop.episodes

    # (a) paraphrases
    if paraphrased is None:
        if paraphrases is None:
            path = shipped_paraphrases(family)
            paraphrases = load_paraphrases(path) if path is not None else None
        if paraphrases is not None:
            jobs = [(e["env"], e["seed"], e["index"]) for e in base]
            recs = pool.run(policy, jobs, paraphrases=paraphrases, max_steps=max_steps, progress="paraphrases")
            paraphrased = recs
    else:
        paraphrased = paraphrased.episodes
    if paraphrased is None:
        notes.append(f"generalisation: no paraphrase file for {family} envs")
    else:
        s = summarize_episodes(paraphrased, "all")
        rows.append(ProbeResult("paraphrases", f"file {Path(paraphrases.source).name}", len(paraphrased),
                                s["successes"], len(base), sum(bool(e["success"]) for e in base),
                                s["paraphrased_fraction"],
                                per_phrasing=per_phrasing(paraphrased, paraphrases)))  # fmt: skip

    # (b) held-out colour-object pairs
    pairs = held_out_pairs_of(cfg) if cfg is not None else []
    if family != "babyai":
        notes.append(f"generalisation: held-out pairs and templates are BabyAI probes, not {family}")
        return rows, notes
    if not pairs:
        notes.append("generalisation: no held-out pairs (train with data.hold_out_pairs to measure compositions)")
    else:
        jobs, ctrl, short = _held_out_and_matched_jobs(names, env_kwargs, seed_start, episodes, pairs)
        if jobs:
            recs = pool.run(policy, jobs, max_steps=max_steps, progress="held-out pairs")
            seen = pool.run(policy, ctrl, max_steps=max_steps, progress="held-out pairs: control") if ctrl else []
            rows.append(ProbeResult("held-out pairs", ", ".join(pairs), len(recs), sum(bool(r["success"]) for r in recs),
                                    len(seen), sum(bool(e["success"]) for e in seen), 0.0,
                                    note="in-distribution: episodes naming only trained pairs, matched by template "
                                         "and object type; per pair " + _per_pair(recs, pairs)))  # fmt: skip
        if short:
            notes.append(f"generalisation: held-out pairs: {short}")

    # (c) held-out template
    jobs, short = _scanned_jobs(names, env_kwargs, seed_start, episodes, unique_target)
    if not jobs:
        notes.append("generalisation: no held-out template for these missions (needs `go to a/the {color} "
                     "{object}` missions)")
    else:
        orig = pool.run(policy, jobs, max_steps=max_steps, progress="template: original")
        new = pool.run(policy, jobs, paraphrases=_TEMPLATE_MAP, max_steps=max_steps, progress="template: rewritten")
        rows.append(ProbeResult("held-out template", "go to a/the {color} {object} -> go to the {object}",
                                len(new), sum(bool(r["success"]) for r in new), len(orig),
                                sum(bool(r["success"]) for r in orig), 1.0,
                                note="seeds whose target is the only object of its type"))  # fmt: skip
        if short:
            notes.append(f"generalisation: held-out template: {short}")
    for r in rows:
        log(r.line())
    return rows, notes


def per_phrasing(records: Sequence[dict[str, Any]], paraphrases: ParaphraseMap) -> dict[str, list[int]]:
    """``{alternative as written in the file: [successes, episodes]}`` (``"(not rewritten)"`` for the rest); episode
    seed ``s`` used alternative ``s % len``, as the rollouts do."""
    out: dict[str, list[int]] = {}
    for r in records:
        found = paraphrases.alternatives(r["instruction"]) if r.get("paraphrased") else None
        key = "(not rewritten)" if found is None else found[0][int(r["seed"]) % len(found[0])]
        cell = out.setdefault(key, [0, 0])
        cell[0] += int(bool(r["success"]))
        cell[1] += 1
    return out


def _scanned_jobs(names: Sequence[str], env_kwargs: dict[str, Any], start: int, episodes: int,
                  keep: Callable[[Any, dict[str, Any]], bool]) -> tuple[list[tuple[str, int, int]], str]:  # fmt: skip
    jobs: list[tuple[str, int, int]] = []
    short = []
    for t, name in enumerate(names):
        seeds = scan_seeds(name, env_kwargs, start, episodes, keep, MAX_SCAN_FACTOR * episodes)
        jobs.extend((name, s, t * episodes + i) for i, s in enumerate(seeds))
        if len(seeds) < episodes:
            short.append(f"{name}: {len(seeds)} of {episodes} episodes found in {MAX_SCAN_FACTOR * episodes} seeds")
    return jobs, "; ".join(short)
