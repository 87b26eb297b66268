"""Debiasing a spurious correlation with RRM circuits (`rrm debias`): a seeded study.

Features that carry a spurious cue into the decision are found in the circuits of bias-conflicting
training images, chosen in number on a validation split, and set to their baselines through the
replacement hook mode with the SAE errors kept. `run_debias` runs one seed against baselines
(plain attribution without pruning, random latents, neurons, within-class activation difference,
DFR last-layer retraining, a balanced-data model); `rrm_plugin.debias.study` summarises seeds.
Nothing that selects reads the test split.
"""

from rrm_plugin.debias.ablation import Ablation, ablation_hooks, predict
from rrm_plugin.debias.data import SpuriousSplit
from rrm_plugin.debias.dfr import DFRHead, fit_dfr, group_weights
from rrm_plugin.debias.evaluation import GroupAccuracy, bootstrap_accuracy, group_accuracy
from rrm_plugin.debias.experiment import DebiasConfig, SeedResult, run_debias
from rrm_plugin.debias.scoring import (
    activation_difference_scores,
    attribution_feature_scores,
    neuron_attribution_scores,
)
from rrm_plugin.debias.selection import Selection, choose_count, rank_units
from rrm_plugin.debias.study import load_study, summarise_seeds

__all__ = [
    "Ablation",
    "DFRHead",
    "DebiasConfig",
    "GroupAccuracy",
    "SeedResult",
    "Selection",
    "SpuriousSplit",
    "ablation_hooks",
    "activation_difference_scores",
    "attribution_feature_scores",
    "bootstrap_accuracy",
    "choose_count",
    "fit_dfr",
    "group_accuracy",
    "group_weights",
    "load_study",
    "neuron_attribution_scores",
    "predict",
    "rank_units",
    "run_debias",
    "summarise_seeds",
]
