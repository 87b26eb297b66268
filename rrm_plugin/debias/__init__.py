"""Debiasing a spurious correlation with RRM circuits (`rrm debias`).

Features that carry a spurious cue into the decision are found in the circuits of bias-conflicting
training images, chosen in number on a validation split, and set to their baselines through the
replacement hook mode with the SAE errors kept. `run_debias` compares this with baselines and
bootstrap confidence intervals; nothing it selects reads the test split.
"""

from rrm_plugin.debias.ablation import Ablation, ablation_hooks, predict
from rrm_plugin.debias.data import SpuriousSplit
from rrm_plugin.debias.evaluation import GroupAccuracy, bootstrap_accuracy, group_accuracy
from rrm_plugin.debias.experiment import DebiasConfig, DebiasResult, run_debias
from rrm_plugin.debias.scoring import (
    activation_difference_scores,
    circuit_feature_scores,
    neuron_attribution_scores,
)
from rrm_plugin.debias.selection import Selection, choose_count, rank_units

__all__ = [
    "Ablation",
    "DebiasConfig",
    "DebiasResult",
    "GroupAccuracy",
    "Selection",
    "SpuriousSplit",
    "ablation_hooks",
    "activation_difference_scores",
    "bootstrap_accuracy",
    "choose_count",
    "circuit_feature_scores",
    "group_accuracy",
    "neuron_attribution_scores",
    "predict",
    "rank_units",
    "run_debias",
]
