"""Scoring cluster core: reward models and critics that match their model cards exactly."""

from cluster.batching import pad_batch, plan_batches, run_batched
from cluster.client import RewardClient
from cluster.config import ModelSpec
from cluster.critic import CriticModel, Verdict
from cluster.errors import (
    ConfigError,
    InputTooLong,
    InvalidInput,
    ModelFailure,
    ModelLoadError,
    ScoringError,
)
from cluster.loading import load_model
from cluster.pipeline import ScoringOptions, filter_pairs, read_scores, score_corpus, score_dataset
from cluster.reward import Comparison, RewardModel, RewardResult
from cluster.tokenization import ChatEncoder, Encoded

__all__ = [
    "ChatEncoder", "Comparison", "ConfigError", "CriticModel", "Encoded", "InputTooLong", "InvalidInput",
    "ModelFailure", "ModelLoadError", "ModelSpec", "RewardClient", "RewardModel", "RewardResult", "ScoringError",
    "ScoringOptions", "Verdict", "filter_pairs", "load_model", "pad_batch", "plan_batches", "read_scores",
    "run_batched", "score_corpus", "score_dataset",
]
