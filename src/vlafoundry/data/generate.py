"""``vlafoundry data generate``: the expert plays, every step is recorded, the result is a Minari dataset.

Pipeline: plan -> shards (parallel, resumable) -> assemble (Minari hdf5 + training cache + vlafoundry.json).
``--episodes N`` asks for N *successful* demonstrations: episode ``i`` uses seed ``S+i``; failed seeds are
skipped (and recorded) and the run continues with the next seeds, so the dataset is the first N successes
in seed order: the same bytes whatever the number of workers, and after any number of interruptions.

Layout: the held-out compositions are :mod:`vlafoundry.data.holdout`, the per-process env cache
:mod:`vlafoundry.data.env_cache`, the output folder (plan, resume check, reading shards back)
:mod:`vlafoundry.data.shard_layout`; this module holds the configuration, the shard workers and their pool, the
assembly and :func:`generate_dataset` (every name is importable from here as before).
"""

from __future__ import annotations

import importlib.metadata
import logging
import math
import multiprocessing as mp
import os
import re
import shutil
import sys
import time
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vlafoundry.data.cache import build_cache
from vlafoundry.data.env_cache import (  # noqa: F401 (re-exported)
    _ENVS,
    DEFAULT_ENV_CACHE,
    _get_env,
    check_env_cache,
    env_cache_size,
    set_env_cache_size,
)
from vlafoundry.data.episodes import Episode, to_episode_buffer
from vlafoundry.data.format import (
    CACHE_DIR,
    FORMAT_NAME,
    META_FILE,
    MINARI_DIR,
    SCHEMA_VERSION,
    SHARD_DIR,
    dataset_id_for,
    file_record,
    minari_datasets_path,
    minari_spaces,
    write_json_atomic,
)
from vlafoundry.data.h5compress import compress_hdf5, update_minari_size
from vlafoundry.data.holdout import (  # noqa: F401 (re-exported)
    _PAIR,
    HELD_OUT_REASON,
    HOLD_OUT_OBJECTS,
    HOLD_OUT_SCOPES,
    check_hold_out_scope,
    held_out_in,
    held_out_reason,
    mission_pairs,
    parse_hold_out_pairs,
)
from vlafoundry.data.rollout import check_action_noise, run_expert_episode
from vlafoundry.data.shard_layout import (  # noqa: F401 (re-exported)
    PLAN_FILE,
    _collect,
    _dataset_entries,
    _prepare_root,
    _wipe,
)
from vlafoundry.data.shards import read_shard_summary, shard_path, write_shard
from vlafoundry.envs import canonical_name, expand_env_names, get_family
from vlafoundry.envs.family import split_name

log = logging.getLogger(__name__)
# an env whose expert solves none of this many seeds has no demonstrations to give: stop instead of trying
# max(2N, N + 1000) seeds
FAIL_FAST_SEEDS = 200
LISTED_FAILURES = 20  # failed seeds named on stderr (all of them are in the dataset's metadata)


@dataclass(frozen=True)
class GenerationConfig:
    """Everything that determines a dataset's bytes."""

    env: str
    episodes: int
    seed: int = 0
    image: str = "symbolic"
    max_steps: int | None = None
    episode_timeout_s: float = 10.0
    action_noise: float = 0.0  # DART noise on executed actions (labels stay the expert's)
    # BabyAI "colour object" pairs no mission may name (held-out compositions); a list, as in plan.json
    hold_out_pairs: list[str] = field(default_factory=list)
    hold_out_scope: str = "mission"  # "scene": no level holds a held-out pair either (data/holdout.py)
    # camera observations (families with observation_options, e.g. Meta-World with image="rgb")
    camera: str = "corner2"
    image_size: int = 64
    proprio: str = "auto"

    def __post_init__(self) -> None:
        object.__setattr__(self, "hold_out_pairs", list(parse_hold_out_pairs(self.hold_out_pairs)))
        check_hold_out_scope(self.hold_out_scope)

    def env_kwargs(self) -> dict[str, Any]:
        """``make_env`` keywords: the image mode, what the family reads of the camera options, the step cap."""
        return {"image": self.image, **get_family(self.env).env_kwargs(self), "max_steps": self.max_steps}

    def tasks(self) -> list[str]:
        return expand_env_names(self.env)

    def family(self) -> str:
        return get_family(self.env).name


@dataclass
class GenerationResult:
    root: Path
    metadata: dict[str, Any]
    wall_s: float
    rollout_s: float
    assemble_s: float
    steps_generated: int
    episodes_generated: int
    shards_reused: int
    extra: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------- workers
def _run_shard(job: tuple[dict[str, Any], int, int, str]) -> dict[str, Any]:
    """Generate shard ``k`` (episode indices ``[k*size, (k+1)*size)``) and write it atomically."""
    cfg_dict, k, size, shard_dir = job
    cfg = GenerationConfig(**cfg_dict)
    tasks = cfg.tasks()
    episodes: list[Episode] = []
    failures: list[tuple[int, str]] = []
    steps = 0
    env = None
    for i in range(k * size, (k + 1) * size):
        env = _get_env(tasks[i % len(tasks)], cfg)
        seed = cfg.seed + i
        if cfg.hold_out_pairs:
            reason = held_out_reason(env.reset(seed=seed)["instruction"], env.unwrapped, cfg.hold_out_pairs,
                                     cfg.hold_out_scope)
            if reason is not None:
                failures.append((seed, reason))
                continue
        ep, reason = run_expert_episode(env, seed, cfg.episode_timeout_s, cfg.action_noise)
        if ep is None:
            failures.append((seed, reason))
        else:
            episodes.append(ep)
            steps += len(ep["action"])
    assert env is not None
    action_shape = () if env.spec.action_type == "discrete" else (env.spec.action_dim,)
    write_shard(
        shard_path(Path(shard_dir), k), episodes, failures, env.spec.image_shape is not None, action_shape,
        (cfg.seed + k * size, cfg.seed + (k + 1) * size),
    )
    return {"shard": k, "ok": len(episodes), "failed": failures, "steps": steps}


def _start_method(requested: str | None) -> str:
    if requested:
        return requested
    return "fork" if "fork" in mp.get_all_start_methods() and sys.platform != "darwin" else "spawn"


# -------------------------------------------------------------------------------------------- generation
def _roll_out_shards(cfg: GenerationConfig, shard_dir: Path, shard_size: int, workers: int, progress: bool,
                     start_method: str | None) -> tuple[int, int, int, int]:
    """Run shards until the contiguous prefix holds >= N successes. Returns (num_shards, steps, episodes, reused)."""
    from vlafoundry.progress import progress as progress_bar

    for tmp in shard_dir.glob("*.tmp"):  # a shard being written when the previous run died
        tmp.unlink()
    n_needed = cfg.episodes
    max_attempts = max(2 * n_needed, n_needed + 1000)
    reasons: Counter[str] = Counter()  # why the expert failed, over the seeds run by this call
    num_shards = math.ceil(n_needed / shard_size)
    ok: dict[int, int] = {}
    held: dict[int, int] = {}  # seeds skipped on purpose per shard (held-out pairs): not counted as attempts
    reused = 0
    for path in sorted(shard_dir.glob("shard_*.npz")):
        summary = read_shard_summary(path)
        if summary is None:
            log.warning("discarding unreadable shard %s", path.name)
            path.unlink()
            continue
        k = int(path.stem.split("_")[1])
        ok[k] = len(summary[0])
        held[k] = sum(r.startswith(HELD_OUT_REASON) for r in summary[2])
        reused += 1
    steps = episodes = 0
    bar = progress_bar(n_needed, f"generate {cfg.env}", "ep", enabled=progress)
    bar.update(min(n_needed, sum(ok.get(k, 0) for k in range(num_shards))))
    pool = None
    try:
        while True:
            pending = [k for k in range(num_shards) if k not in ok]
            if pending:
                jobs = [(asdict(cfg), k, shard_size, str(shard_dir)) for k in pending]
                if workers <= 1:
                    results = map(_run_shard, jobs)
                else:
                    if pool is None:
                        pool = mp.get_context(_start_method(start_method)).Pool(
                            workers, initializer=set_env_cache_size, initargs=(env_cache_size(),))
                    results = pool.imap_unordered(_run_shard, jobs)
                for res in results:
                    ok[res["shard"]] = res["ok"]
                    held[res["shard"]] = 0
                    steps += res["steps"]
                    episodes += res["ok"]
                    for seed, reason in res["failed"]:
                        if reason.startswith(HELD_OUT_REASON):
                            held[res["shard"]] += 1
                            continue  # skipped on purpose, not an expert failure
                        reasons[_reason_kind(reason)] += 1
                        listed = sum(reasons.values())
                        if listed <= LISTED_FAILURES:
                            more = "; further failures are counted, not listed" if listed == LISTED_FAILURES else ""
                            bar.write(f"expert failed on seed {seed} ({reason}); skipped{more}", file=sys.stderr)
                    bar.update(min(res["ok"], max(0, n_needed - bar.n)))
                    failed = sum(reasons.values())
                    if failed >= FAIL_FAST_SEEDS and not any(ok.values()):
                        raise RuntimeError(
                            f"the expert of {cfg.env} solved none of the {failed} seeds tried ({_top_reasons(reasons)}): "
                            "it cannot make demonstrations of this env; pick another level or task"
                        )
            have = sum(ok[k] for k in range(num_shards))
            if have >= n_needed:
                return num_shards, steps, episodes, reused
            skipped = sum(held.get(k, 0) for k in range(num_shards))
            tried = num_shards * shard_size - skipped  # seeds the expert played
            if tried >= max_attempts:
                raise RuntimeError(
                    f"the expert succeeded on only {have} of {tried} seeds ({_top_reasons(reasons)}); "
                    f"giving up before {n_needed}"
                )
            if skipped >= MAX_HELD_OUT_PER_EPISODE * n_needed + 1000:
                raise RuntimeError(
                    f"{skipped} seeds skipped for the held-out pairs {cfg.hold_out_pairs} (scope "
                    f"{cfg.hold_out_scope!r}) for {have} episodes kept; giving up before {n_needed}: hold fewer "
                    "pairs out, or use hold_out_scope 'mission'")
            num_shards = _next_round_shards(num_shards, shard_size, have, n_needed, max_attempts + skipped)
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
            pool.join()


MAX_HELD_OUT_PER_EPISODE = 50  # seeds skipped for held-out pairs per episode wanted before generation gives up


def _next_round_shards(num_shards: int, shard_size: int, have: int, n_needed: int, max_attempts: int) -> int:
    """Shards after the next round: enough seeds for the missing episodes at the success rate seen so far (10%
    spare, the rate taken as >= 5%), never past ``max_attempts`` seeds."""
    rate = max(have / (num_shards * shard_size), 0.05)
    more = math.ceil((n_needed - have) * 1.1 / rate / shard_size)
    return min(num_shards + more, math.ceil(max_attempts / shard_size))


def _reason_kind(reason: str) -> str:
    """A failure reason without its numbers ("not solved in 64 steps" -> "not solved in N steps")."""
    return re.sub(r"\d+", "N", reason)


def _top_reasons(reasons: Counter[str], k: int = 3) -> str:
    if not reasons:
        return "no failure recorded by this call"
    return "; ".join(f"{n} x {r}" for r, n in reasons.most_common(k))


def _env_spec_dict(cfg: GenerationConfig, tasks: list[str]) -> dict[str, Any]:
    spec = _get_env(tasks[0], cfg).spec.to_dict()
    spec["name"] = cfg.env
    return spec


def _write_minari(root: Path, cfg: GenerationConfig, episodes: list[Episode], spec: dict[str, Any]) -> str:
    import minari

    family = get_family(cfg.env)
    dataset_id = dataset_id_for(cfg.env)
    obs_space, act_space = minari_spaces(family, spec)
    buffers = [to_episode_buffer(ep, i, family) for i, ep in enumerate(episodes)]
    tmp_root = root / f".{MINARI_DIR}.tmp"
    if tmp_root.exists():
        shutil.rmtree(tmp_root)
    tasks = cfg.tasks()
    # Minari records one gymnasium env spec: only a one-task dataset has one
    env_arg = family.minari_env_spec(split_name(tasks[0])[1]) if len(tasks) == 1 else None
    expert = family.expert_source or family.expert_name
    with minari_datasets_path(tmp_root), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        minari.create_dataset_from_buffers(
            dataset_id,
            buffers,
            env=env_arg,
            observation_space=obs_space,
            action_space=act_space,
            algorithm_name=expert,
            author="vlafoundry",
            author_email="n/a",
            code_permalink="https://github.com/vlafoundry/vlafoundry",
            description=f"Expert demonstrations for {cfg.env} generated by `vlafoundry data generate` (seed {cfg.seed}).",
            data_format="hdf5",
            jpeg_encoding=False,
        )
    # lossless deflate inside the HDF5 file (Minari's writer has no such option); Minari reads it unchanged
    data_dir = tmp_root / dataset_id / "data"
    compress_hdf5(data_dir / "main_data.hdf5")
    update_minari_size(data_dir)
    if (root / MINARI_DIR).exists():
        shutil.rmtree(root / MINARI_DIR)
    os.replace(tmp_root, root / MINARI_DIR)
    return dataset_id


def _assemble(root: Path, cfg: GenerationConfig, num_shards: int) -> dict[str, Any]:
    import minari

    import vlafoundry

    shard_dir = root / SHARD_DIR
    tasks = cfg.tasks()
    episodes, skipped = _collect(cfg, shard_dir, num_shards)
    failures = [(s, r) for s, r in skipped if not r.startswith(HELD_OUT_REASON)]
    held_out = len(skipped) - len(failures)
    spec = _env_spec_dict(cfg, tasks)
    dataset_id = _write_minari(root, cfg, episodes, spec)
    minari_root = root / MINARI_DIR
    files = {
        str(p.relative_to(root)): file_record(p) for p in sorted(minari_root.rglob("*")) if p.is_file()
    }
    main_file = minari_root / dataset_id / "data" / "main_data.hdf5"
    cache_meta = build_cache(
        episodes, root / CACHE_DIR, tasks, source=main_file,
        source_sha256=files[str(main_file.relative_to(root))]["sha256"],
    )
    per_task = {t: 0 for t in tasks}
    for ep in episodes:
        per_task[ep["task"]] += 1
    family = get_family(cfg.env)
    versions = {"vlafoundry": vlafoundry.__version__, "minari": minari.__version__}
    for dist in ("gymnasium", *family.packages):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    metadata = {
        "schema_version": SCHEMA_VERSION,
        "format": FORMAT_NAME,
        "env": {"name": cfg.env, "family": family.name, "tasks": tasks, "image": cfg.image if spec["image_shape"] else None, "spec": spec},
        "minari": {"datasets_path": MINARI_DIR, "dataset_id": dataset_id, "data_format": "hdf5", "main_file": str(main_file.relative_to(root))},
        "generation": {**asdict(cfg), "expert": family.expert_name, "versions": versions},
        "counts": {
            "episodes": len(episodes),
            "steps": int(sum(len(ep["action"]) for ep in episodes)),
            "failed": len(failures),
            "held_out": held_out,  # seeds skipped because their mission names a held-out pair
            "seeds_used": len(episodes) + len(skipped),
            "per_task": per_task,
        },
        "failed_seeds": [{"seed": s, "reason": r} for s, r in failures],
        "instructions": cache_meta["instructions"],
        "stats": cache_meta["stats"],
        "files": files,
        "cache": {"path": CACHE_DIR, "files": cache_meta["files"]},
    }
    write_json_atomic(root / META_FILE, metadata)
    shutil.rmtree(shard_dir)
    return metadata


def generate_dataset(
    env: str,
    episodes: int,
    out: str | os.PathLike[str],
    workers: int = 1,
    seed: int = 0,
    image: str = "symbolic",
    max_steps: int | None = None,
    overwrite: bool = False,
    episode_timeout_s: float = 10.0,
    shard_size: int | None = None,
    progress: bool = True,
    start_method: str | None = None,
    action_noise: float = 0.0,
    hold_out_pairs: str | Sequence[str] | None = None,
    hold_out_scope: str = "mission",
    camera: str = "corner2",
    image_size: int = 64,
    proprio: str = "auto",
    env_cache: int = DEFAULT_ENV_CACHE,
) -> GenerationResult:
    """Generate ``episodes`` expert demonstrations of ``env`` into ``out``: an env or suite name, or an env list
    (comma-separated names of one family, or a suite file; see :mod:`vlafoundry.envs.names`), whose tasks take
    episodes in turn (episode ``i`` plays task ``i mod T``). The dataset records the canonical name
    (``metaworld/handle-press,metaworld/coffee-push``), which re-expands to the same tasks.

    Resumes an interrupted run with the same settings; refuses to touch an existing dataset unless
    ``overwrite``. ``workers`` processes share the shards; the bytes do not depend on it. ``action_noise`` > 0
    executes noisy actions (Gaussian for continuous actions, random with that probability for discrete ones) and
    records the expert's labels (DART, see
    :func:`~vlafoundry.data.rollout.run_expert_episode`). ``hold_out_pairs`` (BabyAI: ``"red ball,green key"``)
    skips every seed whose mission names one of those colour-object pairs, so the policy never hears them; the
    pairs are recorded under ``generation.hold_out_pairs`` and the skipped seeds under ``counts.held_out``;
    ``hold_out_scope="scene"`` also skips every seed whose level holds one of those objects, so the policy never
    sees them either (recorded under ``generation.hold_out_scope``).
    ``camera``, ``image_size`` and ``proprio`` shape camera observations where the family has them (Meta-World
    ``image="rgb"``: named cameras, frame side, ``full`` / ``hand`` / ``auto`` proprioception; docs/data.md).
    ``env_cache``: envs each process keeps built, least recently used closed first (0: one per task, unbounded;
    :mod:`vlafoundry.data.env_cache`); the bytes do not depend on it.
    """
    if episodes <= 0:
        raise ValueError(f"episodes: expected > 0, got {episodes}")
    if workers <= 0:
        raise ValueError(f"workers: expected > 0, got {workers}")
    set_env_cache_size(env_cache)  # this process's cache; the pool's workers get the same size
    check_action_noise(action_noise)  # the env-independent part, before any env is built
    name = canonical_name(env)  # an env list or suite file becomes "a/x,a/y" (one family, each task once)
    family = get_family(name)
    pairs = parse_hold_out_pairs(hold_out_pairs)
    if pairs and family.name != "babyai":
        raise ValueError(f"hold_out_pairs: expected a BabyAI env (colour-object missions), got {name!r}")
    if image not in family.image_modes:
        raise ValueError(f"image: expected one of {list(family.image_modes)} for {family.name} envs, got {image!r}")
    expand_env_names(name)  # validates the names early
    cfg = GenerationConfig(env=name, episodes=int(episodes), seed=int(seed), image=image,
                           max_steps=max_steps, episode_timeout_s=float(episode_timeout_s),
                           action_noise=float(action_noise), hold_out_pairs=list(pairs),
                           hold_out_scope=str(hold_out_scope), camera=str(camera),
                           image_size=int(image_size), proprio=str(proprio))
    family.validate_observation(cfg)
    root = Path(out)
    t0 = time.perf_counter()
    # build (and import) the first env in the parent: forked workers inherit it instead of re-importing
    spec = _get_env(cfg.tasks()[0], cfg).spec
    check_action_noise(action_noise, spec)  # checked before anything is written
    size = shard_size or max(1, min(50, math.ceil(episodes / 40)))
    size = _prepare_root(root, cfg, size, overwrite)
    cpu0 = _cpu_seconds()
    try:
        num_shards, steps, n_eps, reused = _roll_out_shards(cfg, root / SHARD_DIR, size, workers, progress,
                                                            start_method)
        t1 = time.perf_counter()
        rollout_cpu = _cpu_seconds() - cpu0
        metadata = _assemble(root, cfg, num_shards)
    except OSError as exc:  # e.g. disk full: say where, and that nothing finished is lost
        raise OSError(exc.errno, f"writing the dataset in {root} failed ({exc.strerror or exc}); finished "
                      "shards are kept: free space and rerun the same command to resume") from exc
    t2 = time.perf_counter()
    return GenerationResult(root, metadata, t2 - t0, t1 - t0, t2 - t1, steps, n_eps, reused,
                            extra={"rollout_cpu_s": rollout_cpu, "workers": workers})


def _cpu_seconds() -> float:
    """CPU time of this process plus its reaped children (the pool workers)."""
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime
