"""Environment names -> envs, through the env-family registry (:mod:`vlafoundry.envs.family`).

Names are ``<family>/<task>`` (``babyai/GoToLocal``, ``metaworld/push``) or ``<family>/<suite>``
(``metaworld/mt10``); each family owns its spelling, suites and env construction. Where a list of tasks is
meant (generation, training data, evaluation) an env argument may also be an env list: comma-separated names of
one family (``metaworld/handle-press,metaworld/coffee-push``) or a suite file (:mod:`vlafoundry.envs.names`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from vlafoundry.envs.family import Env, get_family, split_name
from vlafoundry.envs.names import is_env_list, list_slug, split_env_list


def env_family(name: str | Sequence[str]) -> str:
    """The family name (``"babyai"``, ``"metaworld"``, ...) of an env, suite or env list."""
    if isinstance(name, str) and not is_env_list(name) and "/" not in name:
        raise ValueError(f"env name: expected '<family>/<task>' such as 'babyai/GoToLocal' or 'metaworld/push', "
                         f"got {name!r}")
    return get_family(name).name


def _canonical_one(name: str) -> str:
    fam, rest = split_name(name)
    return f"{fam.name}/{rest}"


def _expand_one(name: str) -> list[str]:
    fam, rest = split_name(name)
    return fam.expand(rest)


def canonical_name(name: str | Sequence[str]) -> str:
    """Normalise spelling: ``metaworld/push-v3`` -> ``metaworld/push``, ``MetaWorld/MT10`` -> ``metaworld/mt10``.

    An env list (comma-separated, a suite file or a sequence) becomes its canonical entries joined by commas (suites
    kept as suite names; a one-entry list is that entry), after checking that they share a family and name no task
    twice; the result re-expands (:func:`expand_env_names`) to the same tasks without the suite file.
    """
    if not is_env_list(name):
        return _canonical_one(str(name))
    entries = [_canonical_one(e) for e in split_env_list(name)]
    expand_env_names(entries)  # one family, no task twice
    return ",".join(entries)


def expand_env_names(name: str | Sequence[str]) -> list[str]:
    """A suite name -> its task names; a single env name -> ``[name]``; an env list -> the tasks of its entries in
    order (canonicalised and validated). An env list must name tasks of one family, each once."""
    if not is_env_list(name):
        return _expand_one(str(name))
    get_family(name)  # one family (says which ones otherwise)
    tasks: list[str] = []
    origin: dict[str, str] = {}
    repeated: list[str] = []
    for entry in split_env_list(name):
        for task in _expand_one(entry):
            if task in origin:
                repeated.append(f"{task} (from {origin[task]!r} and {entry!r})")
                continue
            origin[task] = entry
            tasks.append(task)
    if repeated:
        raise ValueError(f"env list: expected each task once, got {'; '.join(repeated)}; remove the repeats "
                         "(a task listed twice would get twice the demonstrations and evaluation episodes)")
    return tasks


def env_slug(name: str | Sequence[str]) -> str:
    """A short, file-name-safe, deterministic slug of an env argument (for cache folders and dataset ids):
    ``babyai/GoToLocal`` -> ``babyai-gotolocal``; an env list -> its family, first task, how many more and a hash
    of the canonical list (``metaworld-handle-press-and-1-more-1a2b3c4d``)."""
    canonical = canonical_name(name)
    entries = canonical.split(",")
    if len(entries) == 1:
        return canonical.replace("/", "-").lower()
    return list_slug(get_family(canonical).name, entries)


def make_env(name: str, **kwargs: Any) -> Env:
    """Build one environment by name; ``kwargs`` go to the family (e.g. ``image="rgb"`` for BabyAI; generation
    passes ``image`` and ``max_steps``)."""
    fam, rest = split_name(name)
    if rest in fam.suites():
        raise ValueError(f"{fam.name}/{rest!r} is a suite; call expand_env_names() and make one env per task")
    return fam.make_env(rest, **kwargs)
