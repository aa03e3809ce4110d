"""Checkpoints: safetensors for tensors, JSON for everything else; atomic writes; nothing is ever unpickled.

Layout of one checkpoint directory (``RUN/checkpoints/step_0000500``)::

    model.safetensors     policy weights
    optim.safetensors     optimiser tensors (AdamW moments), keyed ``<param_index>.<name>``
    rng.safetensors       torch CPU (and CUDA) generator states as uint8 tensors
    state.json            step, schedule, optimiser hyper-parameters, data-order state, numpy/python RNG, metrics
    config.json           the resolved experiment configuration
    processor.json        the policy's processor state (spec with normalisation statistics, tokenizer) and
                          construction arguments: with config.json's ``model`` section and model.safetensors,
                          a folder ``vlafoundry.models.load_policy`` reads (older checkpoints: extra.json)

A checkpoint is written into ``<name>.tmp-<pid>``, every file flushed and fsync'd, then renamed into place, and
only then is ``RUN/checkpoints/latest`` (a one-line text file) atomically replaced. A directory without the
``COMPLETE`` marker, or a ``.tmp-`` directory left by a killed process, is never picked up.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlafoundry.io import load_json_file, load_tensors, save_tensors, write_json_atomic
from vlafoundry.models.base import PolicyLoadError, check_tensors

MARKER = "COMPLETE"


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete, corrupt or does not match the model; the message names the file/tensor."""


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


# ----------------------------------------------------------------------------- optimiser state <-> flat tensors
def optimizer_to_flat(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for name, val in st.items():
            if isinstance(val, torch.Tensor):
                tensors[f"{idx}.{name}"] = val
            else:
                scalars.setdefault(str(idx), {})[name] = val
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_flat(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, val in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = val
    for idx, sc in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(sc)
    groups = meta["param_groups"]
    if len(groups) != len(opt.param_groups):
        raise CheckpointError(f"optimiser: expected {len(opt.param_groups)} parameter groups, found {len(groups)}")
    opt.load_state_dict({"state": state, "param_groups": groups})


# ----------------------------------------------------------------------------- RNG
def capture_rng() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = s
    np_state = np.random.get_state()
    meta = {
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": _py_state_to_json(random.getstate()),
    }
    return tensors, meta


def restore_rng(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("torch_cuda_")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    n = meta["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    random.setstate(_py_state_from_json(meta["python"]))


def _py_state_to_json(state: tuple) -> list:
    return [state[0], list(state[1]), state[2]]


def _py_state_from_json(obj: list) -> tuple:
    return (obj[0], tuple(obj[1]), obj[2])


# ----------------------------------------------------------------------------- save / load
def save_checkpoint(
    directory: str | Path,
    *,
    model_state: dict[str, torch.Tensor],
    config: dict[str, Any],
    state: dict[str, Any] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    extra: dict[str, Any] | None = None,
    include_rng: bool = True,
) -> Path:
    """Write a complete checkpoint atomically into ``directory`` (which must not exist yet, or is replaced)."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.with_name(directory.name + f".tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        save_tensors(tmp / "model.safetensors", model_state, metadata={"format": "vlafoundry-policy"})
        state = dict(state or {})
        if optimizer is not None:
            opt_tensors, opt_meta = optimizer_to_flat(optimizer)
            save_tensors(tmp / "optim.safetensors", opt_tensors)
            state["optimizer"] = opt_meta
        if include_rng:
            rng_tensors, rng_meta = capture_rng()
            save_tensors(tmp / "rng.safetensors", rng_tensors)
            state["rng"] = rng_meta
        write_json_atomic(tmp / "state.json", state)
        write_json_atomic(tmp / "config.json", config)
        write_json_atomic(tmp / "processor.json", extra or {})
        write_json_atomic(tmp / MARKER, {"files": sorted(p.name for p in tmp.iterdir())})
        _fsync_dir(tmp)
        if directory.exists():
            old = directory.with_name(directory.name + f".old-{os.getpid()}")
            os.replace(directory, old)
            os.replace(tmp, directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, directory)
        _fsync_dir(directory.parent)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            raise CheckpointError(f"could not write checkpoint {directory}: {exc.strerror or exc}; "
                                  "the previous checkpoint is untouched") from exc
        raise
    return directory


def is_complete(directory: str | Path) -> bool:
    d = Path(directory)
    return d.is_dir() and ".tmp-" not in d.name and (d / MARKER).is_file() and (d / "model.safetensors").is_file()


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint dir, a run dir (its latest complete checkpoint) or a ``checkpoints`` dir -> checkpoint dir."""
    p = Path(path).expanduser()
    if not p.exists():
        raise CheckpointError(f"checkpoint path {p} does not exist")
    if p.is_file():
        if p.suffix in (".pt", ".pth", ".pkl", ".bin", ".ckpt"):
            raise CheckpointError(f"{p}: refusing a pickle-based file; vlafoundry checkpoints are directories "
                                  "of safetensors + JSON (pickle files can execute code when loaded)")
        raise CheckpointError(f"{p}: expected a checkpoint directory, got a file")
    if is_complete(p):
        return p
    for ckdir in (p / "checkpoints", p):
        latest = ckdir / "latest"
        if latest.is_file():
            cand = ckdir / latest.read_text().strip()
            if is_complete(cand):
                return cand
        cands = sorted(d for d in ckdir.glob("step_*") if is_complete(d))
        if cands:
            return cands[-1]
    if (p / "model.safetensors").exists():
        raise CheckpointError(f"{p}: checkpoint is incomplete (no {MARKER} marker); it was interrupted while written")
    raise CheckpointError(f"{p}: no complete checkpoint found (expected model.safetensors + {MARKER})")


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_tensors(path, CheckpointError)


def _load_json(path: Path) -> Any:
    return load_json_file(path, CheckpointError)


#: config keys older versions wrote that no longer exist (dropped when a checkpoint's config is read, so old
#: checkpoints still load): section -> key names
RETIRED_CONFIG_KEYS: dict[str, tuple[str, ...]] = {
    "data": ("loader_workers",),  # never read: training indexes the in-memory cache directly (no DataLoader)
}


def _drop_retired_keys(config: Any) -> Any:
    if isinstance(config, dict):
        for section, keys in RETIRED_CONFIG_KEYS.items():
            if isinstance(config.get(section), dict):
                for k in keys:
                    config[section].pop(k, None)
    return config


def _read_checkpoint(d: Path) -> dict[str, Any]:
    return {
        "dir": d,
        "model": _load_tensors(d / "model.safetensors"),
        "config": _drop_retired_keys(_load_json(d / "config.json")),
        "state": _load_json(d / "state.json"),
        "extra": _load_json(d / ("processor.json" if (d / "processor.json").is_file() else "extra.json")),
    }


def _is_intact(d: Path) -> bool:
    """Every file of checkpoint ``d`` reads back (tensors and JSON), not only its ``COMPLETE`` marker."""
    try:
        _read_checkpoint(d)
        for name in ("optim.safetensors", "rng.safetensors"):
            if (d / name).exists():
                _load_tensors(d / name)
    except CheckpointError:
        return False
    return True


def intact_older_checkpoint(d: Path) -> Path | None:
    """The newest complete checkpoint older than ``d`` in the same ``checkpoints`` directory whose files all read
    back, or None."""
    d = Path(d)
    older = sorted((c for c in d.parent.glob("step_*") if c.name < d.name and is_complete(c)), reverse=True)
    return next((c for c in older if _is_intact(c)), None)


class CorruptCheckpointError(CheckpointError):
    """A checkpoint's files do not read back; ``corrupt`` is its directory, ``fallback`` the newest intact older
    checkpoint beside it (or None)."""

    def __init__(self, message: str, corrupt: Path, fallback: Path | None) -> None:
        super().__init__(message)
        self.corrupt, self.fallback = corrupt, fallback


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint into plain objects: {dir, model, config, state, extra}; never unpickles.

    A checkpoint of a run (``step_*``) whose files do not read back raises :class:`CorruptCheckpointError`
    naming it, the fault and the newest intact older checkpoint of the run to use instead."""
    d = resolve_checkpoint(path)
    try:
        return _read_checkpoint(d)
    except CheckpointError as exc:
        if not d.name.startswith("step_"):
            raise
        fallback = intact_older_checkpoint(d)
        hint = (f"the newest intact older checkpoint is {fallback}: use it instead" if fallback is not None
                else f"there is no intact older checkpoint in {d.parent}")
        raise CorruptCheckpointError(f"checkpoint {d} is corrupt: {exc}; {hint}", d, fallback) from None


def load_optimizer_state(ckpt_dir: Path, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    optimizer_from_flat(optimizer, _load_tensors(ckpt_dir / "optim.safetensors"), state["optimizer"])


def load_rng_state(ckpt_dir: Path, state: dict[str, Any]) -> None:
    restore_rng(_load_tensors(ckpt_dir / "rng.safetensors"), state["rng"])


def check_state_dict(model: torch.nn.Module, tensors: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Compare a loaded state dict with ``model`` (:func:`vlafoundry.models.base.check_tensors`, the one check):
    missing, unexpected or mis-shaped tensors raise CheckpointError naming them."""
    try:
        return check_tensors(model, tensors, source)
    except PolicyLoadError as exc:
        raise CheckpointError(str(exc)) from None


def prune_checkpoints(ckdir: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` complete checkpoints, and stale temporary directories."""
    for d in ckdir.glob("*.tmp-*"):
        shutil.rmtree(d, ignore_errors=True)
    complete = sorted(d for d in ckdir.glob("step_*") if is_complete(d))
    for d in complete[:-keep]:
        shutil.rmtree(d, ignore_errors=True)
