"""Environment-authoring API and discovery."""

from agent_grpo.envs.api import (
    BUDGET_NOTICE,
    LAST_TURN_NOTICE,
    Environment,
    Episode,
    EvalColumn,
    EvalProtocol,
)
from agent_grpo.envs.registry import EnvEntry, load_envs, make_env

__all__ = ["BUDGET_NOTICE", "LAST_TURN_NOTICE", "EnvEntry", "Environment", "Episode", "EvalColumn", "EvalProtocol", "load_envs", "make_env"]
