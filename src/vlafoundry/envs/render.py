"""Offscreen MuJoCo rendering on a CPU: choosing the GL backend, and a fast renderer reused per env.

MuJoCo reads ``MUJOCO_GL`` once, when ``mujoco`` is first imported, so the backend must be chosen before that:
:func:`configure_gl` runs when ``vlafoundry.envs`` is imported (``envs/metaworld.py``), and again (a no-op) before a
Meta-World env is built.
It honours ``MUJOCO_GL`` when it is set (adding ``EGL_PLATFORM=surfaceless`` for ``egl`` unless that is set too);
otherwise it picks EGL (Mesa's surfaceless platform: no display, no GPU needed) when its libraries are installed,
else OSMesa (:func:`library_probe`, instant; :func:`probe_backend` renders a frame in a subprocess to check), and
exports the choice into ``os.environ``, so worker processes (forked or spawned) inherit it. When none works, rendering is turned off
(``MUJOCO_GL=disable``: state-only envs still run) and :func:`require_rendering` raises
:class:`RenderingUnavailable` naming the Debian packages to install.

:class:`FastRenderer` wraps one ``mujoco.Renderer`` with what measurably speeds software rendering without
changing what a policy sees (``bench/render.py`` measures each): multisampling off (``offsamples = 0``), shadow
maps off (``shadowsize = 0``), the floor's reflection pass off (it draws the whole scene a second time), the
skybox off. Frames are uint8 ``(H, W, 3)``, top row first.

:func:`configure_gl` also sets ``LP_NUM_THREADS=0`` (unless set): Mesa's llvmpipe then rasterises in the calling
thread instead of a thread pool. It costs no CPU time per frame at these sizes (measured), keeps workers from
oversubscribing the cores, and makes ``fork`` safe: a process forked from one that has rendered with llvmpipe's
threads hangs on its first frame (its copy of the pool has no threads), while with ``LP_NUM_THREADS=0`` forked
env workers (generation, evaluation) render, through inherited renderers or new ones.
"""

from __future__ import annotations

import atexit
import os
import subprocess
import sys
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

#: Backends tried, in order, when ``MUJOCO_GL`` is not set.
BACKENDS: tuple[str, ...] = ("egl", "osmesa")
#: The Debian packages each backend needs.
GL_PACKAGES: dict[str, tuple[str, ...]] = {"egl": ("libegl1", "libegl-mesa0", "libgl1-mesa-dri"),
                                           "osmesa": ("libosmesa6",)}
#: ``MUJOCO_GL`` values that turn rendering off (MuJoCo's own list).
DISABLED = ("disable", "disabled", "off", "false", "0")
#: Where the reason for "no backend" travels to worker processes.
ERROR_VAR = "VLAFOUNDRY_GL_ERROR"
PROBE_TIMEOUT_S = 120.0
_PROBE = ("import mujoco\n"
          "m = mujoco.MjModel.from_xml_string('<mujoco><worldbody><geom size=\".1\"/></worldbody></mujoco>')\n"
          "r = mujoco.Renderer(m, 8, 8)\n"
          "r.update_scene(mujoco.MjData(m))\n"
          "r.render()\n"
          "r.close()\n")


class RenderingUnavailable(RuntimeError):
    """No OpenGL backend MuJoCo can render offscreen with; the message says what to install."""


_backend: str | None = None  # the chosen MUJOCO_GL value ("" when mujoco was imported before we could choose)
_error: str | None = None  # why rendering is unavailable (None: it is available or untested)
_configured = False
_live: weakref.WeakSet[FastRenderer] = weakref.WeakSet()
_exit_hook = False


def _close_all() -> None:
    """Free every live renderer before the GL library tears down (mujoco's EGL terminates its display at exit;
    a renderer garbage-collected after that prints EGL errors)."""
    for renderer in list(_live):
        renderer.close()


def backend_env(backend: str) -> dict[str, str]:
    """The environment variables that select ``backend`` (``egl`` also gets Mesa's surfaceless platform; PyOpenGL,
    which MuJoCo's EGL and OSMesa contexts use, is pointed at the same platform)."""
    env = {"MUJOCO_GL": backend}
    if backend == "egl":
        env["EGL_PLATFORM"] = os.environ.get("EGL_PLATFORM", "surfaceless")
    if backend in ("egl", "osmesa"):
        env["PYOPENGL_PLATFORM"] = backend
    return env


def _pyopengl_conflict(backend: str) -> str | None:
    """Why ``backend`` cannot work in this process because PyOpenGL was imported for another platform."""
    if backend not in ("egl", "osmesa") or "OpenGL" not in sys.modules:
        return None
    platform = os.environ.get("PYOPENGL_PLATFORM", "")
    if platform and platform.lower() == backend:
        return None
    return (f"PyOpenGL was imported before vlafoundry chose MuJoCo's GL backend, for platform {platform or 'glx'!r} "
            f"rather than {backend!r}; call vlafoundry.envs.render.configure_gl() (or build a Meta-World env) before "
            f"importing OpenGL, or set MUJOCO_GL={backend} and PYOPENGL_PLATFORM={backend} before starting Python")


def probe_backend(backend: str) -> tuple[bool, str]:
    """Render one tiny frame with ``backend`` in a subprocess; ``(works, why not)``."""
    env = {**os.environ, **backend_env(backend)}
    try:
        res = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True,
                             timeout=PROBE_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"probe failed ({exc})"
    if res.returncode == 0:
        return True, ""
    lines = [ln.strip() for ln in res.stderr.strip().splitlines() if ln.strip()]
    return False, lines[-1] if lines else f"exit status {res.returncode}"


def library_probe(backend: str) -> tuple[bool, str]:
    """Whether ``backend``'s libraries are installed (instant: no GL call; :func:`probe_backend` renders a frame)."""
    import ctypes.util

    needs = {"egl": ("EGL", "EGL_mesa"), "osmesa": ("OSMesa",)}.get(backend, ())
    missing = [f"lib{name}" for name in needs if ctypes.util.find_library(name) is None]
    if not needs:
        return False, f"unknown backend {backend!r}"
    return (not missing), (f"{', '.join(missing)} not found" if missing else "")


def missing_message(reasons: Sequence[str]) -> str:
    """The error text when no backend works: what was tried and which Debian packages to install."""
    tried = f" ({'; '.join(reasons)})" if reasons else ""
    return ("MuJoCo offscreen rendering is unavailable: no OpenGL backend works here" + tried + ". Install the "
            f"Debian packages {' '.join(GL_PACKAGES['egl'])} (EGL, tried first) or {' '.join(GL_PACKAGES['osmesa'])}"
            f" (OSMesa), e.g. `apt-get install -y {' '.join(GL_PACKAGES['egl'])}`, or set MUJOCO_GL to a backend "
            "that works on this machine before starting Python")


def configure_gl(probe: Callable[[str], tuple[bool, str]] = library_probe, force: bool = False) -> str | None:
    """Choose MuJoCo's GL backend for this process (once; ``force`` chooses again). Returns the backend, or
    ``None`` when rendering is unavailable (:func:`require_rendering` then says why)."""
    global _backend, _error, _configured
    if _configured and not force:
        return None if _error else _backend
    _configured = True
    _error = None
    os.environ.setdefault("LP_NUM_THREADS", "0")  # llvmpipe without a thread pool: fork-safe (module docstring)
    current = os.environ.get("MUJOCO_GL", "").strip().lower()
    if current:
        _backend = current
        if current in ("egl", "osmesa"):
            conflict = _pyopengl_conflict(current)
            for key, value in backend_env(current).items():
                os.environ.setdefault(key, value)
            _error = conflict
        if current in DISABLED:
            _error = os.environ.get(ERROR_VAR) or (f"MuJoCo offscreen rendering is off (MUJOCO_GL={current!r}); "
                                                   "unset MUJOCO_GL or set it to egl or osmesa")
        return None if _error else _backend
    if "mujoco" in sys.modules:  # too late to choose: mujoco picked its default (GLFW, which needs a display)
        _backend = ""
        return _backend
    reasons = []
    for backend in BACKENDS:
        works, why = probe(backend)
        if works:
            conflict = _pyopengl_conflict(backend)
            os.environ.update(backend_env(backend))
            _backend = backend
            _error = conflict
            return None if conflict else backend
        reasons.append(f"{backend}: {why}")
    _backend = "disable"
    _error = missing_message(reasons)
    os.environ["MUJOCO_GL"] = "disable"  # mujoco still imports (state-only envs run); renderers are refused
    os.environ[ERROR_VAR] = _error
    return None


def rendering_error() -> str | None:
    """Why rendering is unavailable in this process, or ``None`` (after :func:`configure_gl`)."""
    configure_gl()
    return _error


def require_rendering() -> None:
    """Raise :class:`RenderingUnavailable` (naming the packages to install) unless a GL backend works."""
    error = rendering_error()
    if error:
        raise RenderingUnavailable(error)


def fast_settings(model: Any) -> None:
    """Set ``model``'s offscreen quality for speed: no multisampling, no shadow map (read when a renderer's GL
    context is made, so call before creating renderers)."""
    model.vis.quality.offsamples = 0
    model.vis.quality.shadowsize = 0


class FastRenderer:
    """One ``mujoco.Renderer`` of ``(height, width)`` for ``model``, configured for speed; reuse it per env."""

    def __init__(self, model: Any, height: int, width: int) -> None:
        require_rendering()
        import mujoco

        fast_settings(model)
        glob = model.vis.global_
        glob.offwidth, glob.offheight = max(int(glob.offwidth), width), max(int(glob.offheight), height)
        try:
            self._renderer = mujoco.Renderer(model, height, width)
        except Exception as exc:  # a backend whose libraries exist but fails here: say which, and what to install
            late = (" (mujoco was imported before vlafoundry could choose a GL backend: set MUJOCO_GL=egl and "
                    "EGL_PLATFORM=surfaceless, or MUJOCO_GL=osmesa, before importing mujoco)") if _backend == "" else ""
            raise RenderingUnavailable(f"MuJoCo could not create a {width}x{height} offscreen renderer with "
                                       f"MUJOCO_GL={os.environ.get('MUJOCO_GL', '')!r}: {exc}{late}. "
                                       + missing_message([])) from exc
        global _exit_hook
        _live.add(self)
        if not _exit_hook:  # registered after mujoco's own exit hook, so it runs before it
            atexit.register(_close_all)
            _exit_hook = True
        flags = self._renderer.scene.flags
        for flag in (mujoco.mjtRndFlag.mjRND_SHADOW, mujoco.mjtRndFlag.mjRND_REFLECTION,
                     mujoco.mjtRndFlag.mjRND_SKYBOX):
            flags[flag] = 0
        self.height, self.width = height, width

    def render(self, data: Any, camera: int | str, out: np.ndarray | None = None) -> np.ndarray:
        """The frame of ``camera`` for ``data``: uint8 (H, W, 3), written into ``out`` when given."""
        self._renderer.update_scene(data, camera=camera)
        return self._renderer.render(out=out)

    def close(self) -> None:
        renderer, self._renderer = getattr(self, "_renderer", None), None
        if renderer is not None:
            try:
                renderer.close()
            except Exception:  # noqa: BLE001 (EGL teardown can fail at interpreter exit; nothing to free then)
                pass


__all__ = ["BACKENDS", "GL_PACKAGES", "FastRenderer", "RenderingUnavailable", "backend_env", "configure_gl",
           "fast_settings", "library_probe", "missing_message", "probe_backend", "rendering_error", "require_rendering"]
