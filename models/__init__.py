"""Architectures behind one hook interface, training, and checkpoints."""

from models.budget import fit_to_budget
from models.registry import MODELS, build_model, count_parameters, model_config

__all__ = ["MODELS", "build_model", "count_parameters", "fit_to_budget", "model_config"]
