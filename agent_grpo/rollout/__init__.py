"""Multi-turn rollouts: engines, the driver, training-batch assembly."""

from agent_grpo.rollout.batch import TrainBatch, assemble_batch
from agent_grpo.rollout.driver import RolloutConfig, RolloutDriver
from agent_grpo.rollout.engine import Engine, GenRequest, GenResult, SamplingParams
from agent_grpo.rollout.hf_engine import HFEngine
from agent_grpo.rollout.logprobs import forward_logprobs
from agent_grpo.rollout.scripted import ScriptedEngine
from agent_grpo.rollout.stops import cut_at_stops

__all__ = [
    "Engine", "GenRequest", "GenResult", "HFEngine", "RolloutConfig", "RolloutDriver", "SamplingParams",
    "ScriptedEngine", "TrainBatch", "assemble_batch", "cut_at_stops", "forward_logprobs",
]
