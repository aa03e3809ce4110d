"""Read LeRobot v3.0 datasets (Parquet + MP4 + JSON) without depending on ``lerobot``; see docs/interop.md.

    ROOT/meta/info.json                               codebase_version "v3.0", fps, features, totals, path templates
    ROOT/meta/stats.json                              per-feature mean/std/min/max/count (+ quantiles)
    ROOT/meta/tasks.parquet                           task strings (the pandas index) -> task_index
    ROOT/meta/episodes/chunk-XXX/file-YYY.parquet     one row per episode: length, data/video file and offsets
    ROOT/data/chunk-XXX/file-YYY.parquet              one row per frame, many episodes per file
    ROOT/videos/<feature>/chunk-XXX/file-YYY.mp4      camera features of dtype "video"
    ROOT/meta/vlafoundry.json                         [written by our export] env name and spec, seeds, feature map

Each frame holds the observation at which its action was taken, so an episode of ``n`` frames gives ``n`` actions
and ``n`` observations; the episode dicts of :mod:`vlafoundry.data.episodes` want ``n + 1`` observations, so the
last observation is repeated (the training cache only reads the first ``n``).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from vlafoundry.data.episodes import Episode
from vlafoundry.io import read_json

CODEBASE_VERSION = "v3.0"
INFO_FILE = "meta/info.json"
STATS_FILE = "meta/stats.json"
TASKS_FILE = "meta/tasks.parquet"
EPISODES_DIR = "meta/episodes"
EXTRA_FILE = "meta/vlafoundry.json"
#: the columns every LeRobot frame has besides its features
INDEX_FEATURES = ("timestamp", "frame_index", "episode_index", "index", "task_index")
MAPPING_ENV = "VLAFOUNDRY_LEROBOT_FEATURES"
IMAGE_DTYPES = ("video", "image")
#: separates camera keys in ``image=KEY1+KEY2`` (their stacking order)
CAMERA_SEP = "+"


def _pa() -> Any:
    try:
        import pyarrow as pa
        import pyarrow.parquet
    except ImportError as exc:  # pragma: no cover - the extra is installed in CI
        raise ImportError("LeRobot datasets need pyarrow: pip install 'vla-foundry[lerobot]' (or `pip install pyarrow`)"
                          ) from exc
    return pa


def is_lerobot_dataset(path: str | os.PathLike[str]) -> bool:
    return (Path(path) / INFO_FILE).is_file()


@dataclass(frozen=True)
class FeatureMap:
    """Which LeRobot features are vlafoundry's ``state``, ``action`` and ``image``.

    Empty fields are filled by convention (:meth:`resolve`): ``observation.state``, ``action``, the camera features
    (dtype video/image; several are stacked in sorted name order) or else ``observation.grid`` (our symbolic grids);
    ``discrete`` from the action dtype (an integer dtype is discrete). Given as
    ``state=KEY,action=KEY,image=KEY[+KEY...]|none,discrete=true|false`` in the environment variable
    ``VLAFOUNDRY_LEROBOT_FEATURES`` or as ``"features": {...}`` in ``meta/vlafoundry.json`` (``image`` may be a list
    there). ``image=A+B`` stacks cameras A and B in that order: each step's image is uint8 ``(K, H, W, 3)`` for K
    cameras (the project's multi-camera contract), ``(H, W, 3)`` for one.
    """

    state: str | None = None
    action: str | None = None
    image: str | None = None  # "KEY", "KEY1+KEY2" (cameras stacked in this order) or "none": no image
    discrete: bool | None = None

    def __post_init__(self) -> None:
        if isinstance(self.image, (list, tuple)):  # vlafoundry.json may list the cameras
            object.__setattr__(self, "image", CAMERA_SEP.join(str(k) for k in self.image))

    @property
    def cameras(self) -> tuple[str, ...]:
        """The image feature keys, in stacking order (empty for none)."""
        if self.image in (None, "none"):
            return ()
        return tuple(k.strip() for k in str(self.image).split(CAMERA_SEP))

    @classmethod
    def parse(cls, text: str) -> FeatureMap:
        out: dict[str, Any] = {}
        names = [f.name for f in fields(cls)]
        for part in filter(None, (p.strip() for p in text.split(","))):
            key, sep, value = part.partition("=")
            key, value = key.strip(), value.strip()
            if not sep or key not in names or not value:
                raise ValueError(f"{MAPPING_ENV}: expected comma-separated KEY=VALUE with KEY in {names}, got {part!r}")
            if key == "discrete":
                if value.lower() not in ("true", "false"):
                    raise ValueError(f"{MAPPING_ENV}: discrete expects true or false, got {value!r}")
                out[key] = value.lower() == "true"
            else:
                out[key] = value
        return cls(**out)

    def merged(self, other: FeatureMap) -> FeatureMap:
        """``self`` with its empty fields taken from ``other``."""
        return replace(self, **{k: v for k, v in asdict(other).items() if getattr(self, k) is None})

    def resolve(self, features: dict[str, Any], where: str) -> FeatureMap:
        """Fill the conventions in and check every named feature exists, naming the choices when one does not."""
        def need(role: str, key: str) -> str:
            if key not in features:
                listed = sorted(k for k in features if k not in INDEX_FEATURES)
                raise ValueError(f"{where}: no feature {key!r} for {role} (features: {listed}); name it with "
                                 f"{MAPPING_ENV}='{role}=KEY' or \"features\" in {EXTRA_FILE}")
            return key

        state = need("state", self.state or "observation.state")
        action = need("action", self.action or "action")
        image = self.image
        if image is None:
            cams = sorted(k for k, f in features.items() if f.get("dtype") in IMAGE_DTYPES)
            image = CAMERA_SEP.join(cams) if cams else ("observation.grid" if "observation.grid" in features else "none")
        keys = replace(self, image=image).cameras
        for key in keys:
            need("image", key)
        if len(set(keys)) != len(keys):
            raise ValueError(f"{where}: image names a camera twice ({list(keys)})")
        if len(keys) > 1:
            bad = [k for k in keys if features[k].get("dtype") not in IMAGE_DTYPES]
            if bad:
                raise ValueError(f"{where}: image {image!r}: only camera features (dtype video or image) can be "
                                 f"stacked, got {[(k, features[k].get('dtype')) for k in bad]}")
            shapes = {k: list(features[k]["shape"]) for k in keys}
            if len({tuple(v) for v in shapes.values()}) > 1:
                raise ValueError(f"{where}: cameras {list(keys)} differ in shape {shapes}; cameras are stacked into "
                                 f"(K, H, W, 3), so pick cameras of one shape with {MAPPING_ENV}='image=KEY[+KEY]'")
        discrete = self.discrete
        if discrete is None:
            discrete = str(features[action].get("dtype", "float32")).startswith(("int", "uint"))
        return FeatureMap(state, action, image, discrete)


@dataclass
class LeRobotInfo:
    root: Path
    info: dict[str, Any]
    extra: dict[str, Any]  # meta/vlafoundry.json, {} for a foreign dataset
    mapping: FeatureMap

    @property
    def fps(self) -> int:
        return int(self.info["fps"])

    @property
    def features(self) -> dict[str, Any]:
        return dict(self.info["features"])

    def feature(self, role: str) -> dict[str, Any] | None:
        """The feature of ``role`` (None if none); for several cameras a stand-in of shape (K, H, W, C)."""
        if role == "image" and len(self.mapping.cameras) > 1:
            first = self.info["features"][self.mapping.cameras[0]]
            return {"dtype": first["dtype"], "shape": [len(self.mapping.cameras), *first["shape"]],
                    "cameras": list(self.mapping.cameras)}
        key = getattr(self.mapping, role)
        return None if key in (None, "none") else self.info["features"][key]


def load_info(root: str | os.PathLike[str], mapping: FeatureMap | None = None) -> LeRobotInfo:
    """info.json (checked), our extra file if any, and the resolved feature map (argument > env var > file)."""
    root = Path(root)
    path = root / INFO_FILE
    info = read_json(path)
    version = info.get("codebase_version")
    if version != CODEBASE_VERSION:
        raise ValueError(f"{path}: codebase_version {version!r}, expected {CODEBASE_VERSION!r} (LeRobot's dataset "
                         "format v3.0; convert older datasets with lerobot's convert_dataset_v21_to_v30)")
    for key in ("fps", "features", "data_path"):
        if key not in info:
            raise ValueError(f"{path}: no {key!r} (a LeRobot v3.0 info.json has fps, features and data_path)")
    extra = read_json(root / EXTRA_FILE) if (root / EXTRA_FILE).is_file() else {}
    m = mapping or FeatureMap()
    if os.environ.get(MAPPING_ENV):
        m = m.merged(FeatureMap.parse(os.environ[MAPPING_ENV]))
    m = m.merged(FeatureMap(**(extra.get("features") or {})))
    return LeRobotInfo(root, info, extra, m.resolve(info["features"], str(path)))


def mapping_tag(mapping: FeatureMap) -> str:
    """8 hex digits naming a feature map (keeps caches built under different maps apart)."""
    return hashlib.sha256(repr(sorted(asdict(mapping).items())).encode()).hexdigest()[:8]


# ------------------------------------------------------------------------------------------------ tables
def _parquet_files(root: Path, sub: str) -> list[Path]:
    files = sorted((root / sub).glob("chunk-*/file-*.parquet"))
    if not files:
        raise ValueError(f"{root / sub}: no chunk-*/file-*.parquet files (not a LeRobot v3.0 dataset?)")
    return files


def read_table(root: Path, sub: str, columns: list[str] | None = None) -> Any:
    """The concatenation, in file order, of ``ROOT/sub/chunk-*/file-*.parquet`` (only ``columns``)."""
    pa = _pa()
    import pyarrow.parquet as pq

    return pa.concat_tables([pq.read_table(p, columns=columns) for p in _parquet_files(root, sub)])


def column_array(table: Any, name: str, shape: list[int] | tuple[int, ...], dtype: str) -> np.ndarray:
    """A column as an (N, *shape) array, whatever the nesting (scalar, list, fixed-size list, Array3D)."""
    pa = _pa()
    col = table.column(name).combine_chunks()
    n = len(col)
    while pa.types.is_list(col.type) or pa.types.is_large_list(col.type) or pa.types.is_fixed_size_list(col.type):
        col = col.flatten()
    values = col.to_numpy(zero_copy_only=False)
    want = int(np.prod(shape)) if len(shape) else 1
    if values.size != n * want:
        raise ValueError(f"column {name!r}: {values.size} values for {n} rows, expected {want} per row (shape {list(shape)})")
    shape_out = (n, *shape) if tuple(shape) != (1,) else (n,)
    return values.reshape(shape_out).astype(dtype, copy=False)


def read_tasks(root: Path) -> dict[int, str]:
    """task_index -> task string from meta/tasks.parquet (the strings are pandas' index column)."""
    import pyarrow.parquet as pq

    _pa()
    table = pq.read_table(root / TASKS_FILE)
    idx = table.column("task_index").to_pylist()
    text_cols = [c for c in table.column_names if c != "task_index"]
    if not text_cols:
        raise ValueError(f"{root / TASKS_FILE}: no task string column besides task_index (got {table.column_names})")
    texts = table.column("task" if "task" in text_cols else text_cols[0]).to_pylist()
    return {int(i): str(t) for i, t in zip(idx, texts)}


def read_stats(root: Path) -> dict[str, dict[str, np.ndarray]]:
    """meta/stats.json as arrays ({} when the file is missing)."""
    path = root / STATS_FILE
    if not path.is_file():
        return {}
    return {k: {s: np.asarray(v) for s, v in d.items()} for k, d in read_json(path).items()}


# ------------------------------------------------------------------------------------------------ episodes
def _decode_image_column(table: Any, key: str) -> np.ndarray:
    """Image features of dtype "image" (PNG/JPEG bytes in a struct column) as (N, H, W, C) uint8."""
    import io

    from PIL import Image

    out = []
    for cell in table.column(key).to_pylist():
        data = cell.get("bytes") if isinstance(cell, dict) else cell
        if data is None:
            raise ValueError(f"image feature {key!r}: a frame without embedded bytes (path {cell.get('path')!r})")
        out.append(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
    return np.stack(out).astype(np.uint8)


def _video_frames(meta: LeRobotInfo, key: str, ep: dict[str, Any], n: int, cache: dict[str, Any]) -> np.ndarray:
    from vlafoundry.data.video import decode_video, frames_at

    template = meta.info.get("video_path") or "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    path = meta.root / template.format(video_key=key, chunk_index=int(ep[f"videos/{key}/chunk_index"]),
                                       file_index=int(ep[f"videos/{key}/file_index"]))
    if key not in cache or cache[key][0] != path:
        cache[key] = (path, decode_video(path))  # one file decoded at a time per camera
    frames, times = cache[key][1]
    wanted = float(ep[f"videos/{key}/from_timestamp"]) + np.arange(n) / meta.fps
    return frames_at(frames, times, wanted, meta.fps, path)


def iterate_lerobot_episodes(meta: LeRobotInfo, task_of_episode: list[str] | None, default_task: str
                             ) -> Iterator[Episode]:
    """Episodes (:mod:`vlafoundry.data.episodes` dicts) in episode-index order.

    ``task_of_episode``: the vlafoundry task (env name) per episode (our export records it); else ``default_task``.
    The LeRobot task string becomes the ``instruction``.
    """
    root, m, feats = meta.root, meta.mapping, meta.info["features"]
    tasks = read_tasks(root)
    episodes = read_table(root, EPISODES_DIR).to_pylist()
    episodes.sort(key=lambda e: int(e["episode_index"]))
    cams = m.cameras  # image keys in stacking order
    cols = [m.state, m.action, "episode_index", "frame_index", "task_index"]
    cols += [c for c in ("next.reward", "next.done") if c in feats]
    cols += [k for k in cams if feats[k]["dtype"] != "video"]
    table = read_table(root, "data", columns=cols)
    ep_col = column_array(table, "episode_index", [1], "int64")
    frame_col = column_array(table, "frame_index", [1], "int64")
    order = np.lexsort((frame_col, ep_col))
    state_ft, action_ft = feats[m.state], feats[m.action]
    state = column_array(table, m.state, state_ft["shape"], "float32")[order]
    action = column_array(table, m.action, action_ft["shape"], "int64" if m.discrete else "float32")[order]
    if m.discrete:
        action = action.reshape(len(action), -1)
        if action.shape[1] != 1:
            raise ValueError(f"{m.action}: discrete actions need one value per frame, got shape {action_ft['shape']}")
        action = action[:, 0]
    elif action.ndim == 1:
        action = action[:, None]
    if state.ndim == 1:
        state = state[:, None]
    task_idx = column_array(table, "task_index", [1], "int64")[order]
    reward = column_array(table, "next.reward", [1], "float32")[order] if "next.reward" in cols else None
    done = column_array(table, "next.done", [1], "bool")[order] if "next.done" in cols else None
    image_all: dict[str, np.ndarray] = {}  # the cameras stored in the Parquet file, (N, H, W, C) each
    for key in cams:
        if feats[key]["dtype"] == "image":
            image_all[key] = _decode_image_column(table, key)[order]
        elif feats[key]["dtype"] != "video":
            image_all[key] = column_array(table, key, feats[key]["shape"], "uint8")[order]
    ep_sorted = ep_col[order]
    starts = np.searchsorted(ep_sorted, [int(e["episode_index"]) for e in episodes])
    video_cache: dict[str, Any] = {}
    for i, ep in enumerate(episodes):
        n = int(ep["length"])
        s = int(starts[i])
        if n < 1 or s + n > len(ep_sorted) or ep_sorted[s] != ep["episode_index"] or ep_sorted[s + n - 1] != ep["episode_index"]:
            raise ValueError(f"{root}: episode {ep['episode_index']} has length {n} in {EPISODES_DIR} but "
                             f"{int((ep_sorted == ep['episode_index']).sum())} frames in data/")
        sl = slice(s, s + n)
        views = [image_all[k][sl] if k in image_all else _video_frames(meta, k, ep, n, video_cache) for k in cams]
        image = None if not views else views[0] if len(views) == 1 else np.stack(views, axis=1)  # (n, [K,] H, W, C)
        st = state[sl]
        term = np.zeros(n, dtype=bool)
        if done is not None:
            term[:] = done[sl]
        elif n:
            term[-1] = True
        t = int(task_idx[s])
        if t not in tasks:
            raise ValueError(f"{root}: episode {ep['episode_index']} has task_index {t}, not in {TASKS_FILE} "
                             f"(indices {sorted(tasks)})")
        yield {
            "seed": _seed(meta, i),
            "task": task_of_episode[i] if task_of_episode else default_task,
            "instruction": tasks[t],
            "image": None if image is None else np.concatenate([image, image[-1:]]),
            "state": np.concatenate([st, st[-1:]]),
            "action": action[sl],
            "reward": reward[sl] if reward is not None else np.zeros(n, dtype=np.float32),
            "terminated": term,
            "truncated": np.zeros(n, dtype=bool),
        }


def _seed(meta: LeRobotInfo, i: int) -> int:
    seeds = meta.extra.get("episode_seed")
    return int(seeds[i]) if isinstance(seeds, list) and i < len(seeds) else -1


def read_lerobot_episodes(root: str | os.PathLike[str], mapping: FeatureMap | None = None) -> list[Episode]:
    """Every episode of a LeRobot v3.0 dataset (tests, tools); training goes through ``DemoDataset``."""
    meta = load_info(root, mapping)
    env = meta.extra.get("env") or {}
    tasks = env.get("tasks") or ["lerobot"]
    ep_task = meta.extra.get("episode_task")
    return list(iterate_lerobot_episodes(meta, [tasks[i] for i in ep_task] if ep_task else None, tasks[0]))
