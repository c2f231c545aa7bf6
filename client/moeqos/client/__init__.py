"""Sync and asyncio clients of the moeqos planner and executor services (torch-free).

from moeqos.client import ExecutorClient, PlannerClient, ConnectOptions, Sampling
with ExecutorClient("127.0.0.1:50061") as executor:
    for event in executor.generate("hello", Sampling(max_tokens=16)):
        print(event.text, end="")
"""

from moeqos.api.channel import ConnectOptions
from moeqos.client.executor import AsyncExecutorClient, ExecutorClient
from moeqos.client.planner import AsyncPlannerClient, PlannerClient
from moeqos.core.service_types import (
    BudgetOutcome,
    ChatMessage,
    Completion,
    DeployOutcome,
    DeploySpec,
    Evaluation,
    ExecutorInfo,
    GenerationEvent,
    GenerationStats,
    PlanOutcome,
    Prediction,
    ProfileProgress,
    ReplanState,
    Sampling,
    SwitchReport,
    WhatIfOutcome,
)

__all__ = [
    "AsyncExecutorClient",
    "AsyncPlannerClient",
    "BudgetOutcome",
    "ChatMessage",
    "Completion",
    "ConnectOptions",
    "DeployOutcome",
    "DeploySpec",
    "Evaluation",
    "ExecutorClient",
    "ExecutorInfo",
    "GenerationEvent",
    "GenerationStats",
    "PlanOutcome",
    "PlannerClient",
    "Prediction",
    "ProfileProgress",
    "ReplanState",
    "Sampling",
    "SwitchReport",
    "WhatIfOutcome",
]
