"""One interface over BabyAI (Minigrid), Meta-World and any registered env family, with each benchmark's expert."""

from vlafoundry.envs.babyai import BabyAIEnv, babyai_levels
from vlafoundry.envs.metaworld import METAWORLD_TASKS, MT10_TASKS, MetaWorldEnv, instruction_for
from vlafoundry.envs.metaworld_instructions import INSTRUCTIONS as METAWORLD_INSTRUCTIONS
from vlafoundry.envs.family import (
    Env,
    EnvFamily,
    families,
    get_family,
    infer_env_name,
    register_family,
    unregister_family,
)
from vlafoundry.envs.names import SUITE_FILE_SUFFIXES, read_suite_file
from vlafoundry.envs.registry import canonical_name, env_family, env_slug, expand_env_names, make_env
from vlafoundry.envs.spec import EVAL_SEED_BASE, EnvSpec

__all__ = [
    "BabyAIEnv",
    "EVAL_SEED_BASE",
    "Env",
    "EnvFamily",
    "EnvSpec",
    "METAWORLD_INSTRUCTIONS",
    "METAWORLD_TASKS",
    "MT10_TASKS",
    "MetaWorldEnv",
    "SUITE_FILE_SUFFIXES",
    "babyai_levels",
    "canonical_name",
    "env_family",
    "env_slug",
    "expand_env_names",
    "families",
    "get_family",
    "infer_env_name",
    "instruction_for",
    "make_env",
    "read_suite_file",
    "register_family",
    "unregister_family",
]
