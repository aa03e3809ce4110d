"""One interface over BabyAI (Minigrid) and Meta-World, with each benchmark's expert."""

from vlafoundry.envs.babyai import BabyAIEnv, babyai_levels
from vlafoundry.envs.metaworld import METAWORLD_TASKS, MT10_TASKS, MetaWorldEnv, instruction_for
from vlafoundry.envs.metaworld_instructions import INSTRUCTIONS as METAWORLD_INSTRUCTIONS
from vlafoundry.envs.family import Env, EnvFamily, families, get_family, register_family
from vlafoundry.envs.registry import canonical_name, env_family, expand_env_names, make_env
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
    "babyai_levels",
    "canonical_name",
    "env_family",
    "expand_env_names",
    "families",
    "get_family",
    "register_family",
    "instruction_for",
    "make_env",
]
