"""Pictures of an evaluation for the report: observation-instruction similarity, attention over the agent's view,
GIF episodes (moved here from the ``eval`` command so that the pipeline and library users share them)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["attention_frames", "first_observations", "gif_specs", "similarity"]


def first_observations(records: Sequence[Mapping[str, Any]], env_kwargs: Mapping[str, Any], k: int
                       ) -> list[dict[str, Any]]:  # fmt: skip
    """Reset observations of the first episodes with distinct instructions (at most ``k``)."""
    from vlafoundry.envs import make_env

    seen: set[str] = set()
    chosen = []
    for rec in records:
        if rec["instruction"] not in seen:
            seen.add(rec["instruction"])
            chosen.append(rec)
        if len(chosen) == k:
            break
    obs, envs = [], {}
    try:
        for rec in chosen:
            if rec["env"] not in envs:
                envs[rec["env"]] = make_env(rec["env"], **env_kwargs)
            obs.append(envs[rec["env"]].reset(seed=int(rec["seed"])))
    finally:
        for e in envs.values():
            e.close()
    return obs


def similarity(policy: Any, records: Sequence[Mapping[str, Any]], env_kwargs: Mapping[str, Any], notes: list[str]
               ) -> tuple[Any, dict[str, float] | None]:  # fmt: skip
    """Cosine similarity of first observations vs instructions via ``policy.embed``, and retrieval recall@k."""
    if not hasattr(policy, "embed"):
        notes.append("no similarity heat map: the policy has no embed()")
        return None, None
    import torch

    from vlafoundry.eval.evaluator import MultimodalEvaluator

    obs = first_observations(records, env_kwargs, 16)
    if len(obs) < 2:
        notes.append("no similarity heat map: fewer than two distinct instructions were evaluated")
        return None, None
    batch: dict[str, Any] = {"instruction": [o["instruction"] for o in obs],
                             "state": np.stack([o["state"] for o in obs])}  # fmt: skip
    if "image" in obs[0]:
        batch["image"] = np.stack([o["image"] for o in obs])
    with torch.no_grad():
        o_emb, i_emb = policy.embed(batch)
    o_n = torch.nn.functional.normalize(o_emb.float(), dim=-1)
    i_n = torch.nn.functional.normalize(i_emb.float(), dim=-1)
    sim = (o_n @ i_n.T).cpu().numpy()
    labels = batch["instruction"]
    alignment = MultimodalEvaluator().evaluate_alignment(o_emb.float(), i_emb.float(), top_k=(1, 5, 10))
    return (sim, [f"obs {k}" for k in range(len(labels))], labels), alignment


def attention_frames(policy: Any, records: Sequence[Mapping[str, Any]], env_kwargs: Mapping[str, Any],
                     notes: list[str], steps: int = 4
                     ) -> tuple[list[np.ndarray], list[np.ndarray], list[str]] | None:  # fmt: skip
    """Attention over the image tokens for the first ``steps`` steps of the first episode.

    Uses ``policy.attention_maps(obs) -> list of (h, w)`` when the policy has it; otherwise records the attention
    of every ``MultiHeadAttention`` whose keys are exactly the image tokens of the newest frame (e.g. language-to-
    vision cross-attention or vision self-attention), averaged over heads and queries.
    """
    import torch

    from vlafoundry.envs import make_env

    if not records or not hasattr(policy, "modules"):
        return None
    rec = records[0]
    env = make_env(rec["env"], **env_kwargs)
    frames, maps, titles = [], [], []
    attn_modules = [m for m in policy.modules() if hasattr(m, "record_attention")]
    try:
        o = env.reset(seed=int(rec["seed"]))
        for t in range(min(steps, len(rec["actions"]))):
            if "image" not in o:
                break
            amap = _attention_for(policy, o, attn_modules, torch)
            if amap is None:
                break
            image = o["image"] if o["image"].ndim == 3 else o["image"][0]  # several cameras: the first one's
            view = _agent_view(env, image)
            frames.append(view)
            # Minigrid's symbolic grid is indexed (x, y); its rendering has rows = y.
            maps.append(amap.T if view is not image else amap)
            titles.append(f"step {t}")
            o, *_ = env.step(np.asarray(rec["actions"][t]))
    finally:
        env.close()
        for m in attn_modules:
            m.record_attention, m.last_attention = False, None
        policy.reset()
    if not maps:
        notes.append("no attention maps: the policy exposes no attention over image tokens")
        return None
    return frames, maps, titles


def _agent_view(env: Any, image: np.ndarray) -> np.ndarray:
    """RGB rendering of the agent's egocentric view where the env offers one (Minigrid), else the raw image."""
    pov = getattr(getattr(env, "unwrapped", None), "get_pov_render", None)
    if pov is not None and image.dtype == np.uint8 and image.max() < 20:  # symbolic view -> render it
        try:
            return np.asarray(pov(tile_size=16), dtype=np.uint8)
        except Exception:  # rendering is cosmetic; fall back to the symbolic grid
            return image
    return image


def _attention_for(policy: Any, o: dict[str, Any], modules: list[Any], torch: Any) -> np.ndarray | None:
    batch = {"image": o["image"][None], "state": o["state"][None], "instruction": [o["instruction"]]}
    if hasattr(policy, "attention_maps"):
        return np.asarray(policy.attention_maps(batch)[0], dtype=float)
    h, w = o["image"].shape[-3:-1]
    n_tokens = getattr(policy, "num_image_tokens", h * w)
    grid = policy.grid_hw(torch.as_tensor(o["image"][None, None])) if hasattr(policy, "grid_hw") else (h, w)
    cells = grid[0] * grid[1]
    cams = int(getattr(getattr(policy, "vision_encoder", None), "num_cameras", 1) or 1)
    if n_tokens == cells:
        first = 0  # one token per cell
    elif n_tokens == cams * (1 + cells):
        first = 1  # the ViT's token groups: [CLS, patches] per camera; the map shows the first camera's patches
    else:
        return None
    for m in modules:
        m.record_attention, m.last_attention = True, None
    policy.reset()
    with torch.no_grad():
        policy.select_action(batch)
    history = int(getattr(getattr(policy, "cfg", None), "history", 1) or 1)
    found = []
    for m in modules:
        a = m.last_attention  # (B, heads, Lq, Lk)
        if a is not None and a.dim() == 4 and a.shape[-1] == n_tokens * history:
            newest = a[0, :, :, -n_tokens:].float().mean(dim=(0, 1))  # newest frame's tokens, (N,)
            found.append(newest[first:first + cells])  # (cells,)
    if not found:
        return None
    return found[-1].reshape(grid).cpu().numpy()


def gif_specs(records: Sequence[Mapping[str, Any]], env_kwargs: Mapping[str, Any], n: int, notes: list[str]
              ) -> list[Any]:  # fmt: skip
    """GIFs (:class:`~vlafoundry.eval.report.GifSpec`) of the first ``n`` successful and ``n`` failed episodes,
    replayed from their seeds and recorded actions; a note when the env cannot render."""
    from vlafoundry.eval.report import GifSpec
    from vlafoundry.eval.rollout import replay_frames, select_gif_episodes

    gifs = []
    for rec in select_gif_episodes(records, max(0, n)):
        frames = replay_frames(rec, env_kwargs)
        if frames:
            outcome = "success" if rec["success"] else "failure"
            gifs.append(GifSpec(frames, f"{outcome}: “{rec['instruction']}” (seed {rec['seed']}, "
                                        f"{rec['length']} steps)"))  # fmt: skip
    if n and not gifs:
        notes.append("no GIFs: the environment cannot render frames")
    return gifs


def trajectory_paths(records: Sequence[Mapping[str, Any]], env_kwargs: Mapping[str, Any], per_task: int = 30
                     ) -> tuple[dict[str, list[tuple[np.ndarray, bool]]], tuple[str, str]] | None:  # fmt: skip
    """Closed-loop paths of the first ``per_task`` episodes of each task (replayed from seeds and actions): ``({task:
    [(path (T, 2), success), ...]}, axis labels)``, or ``None`` when the env family has no 2-D position."""
    from vlafoundry.envs import get_family
    from vlafoundry.eval.rollout import replay_positions

    if not records or per_task <= 0:
        return None
    family = get_family(records[0]["env"])
    out: dict[str, list[tuple[np.ndarray, bool]]] = {}
    for rec in sorted(records, key=lambda r: r["index"]):
        paths = out.setdefault(rec["env"], [])
        if len(paths) >= per_task:
            continue
        path = replay_positions(rec, env_kwargs)
        if path is None:
            return None
        paths.append((path, bool(rec["success"])))
    return out, family.trajectory_axes
