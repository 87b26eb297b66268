"""Class-embedding-space analysis of ViTs (Vilas et al., NeurIPS 2023), for tokens and SAE features.

`project_images` reads every block, attention and MLP output of every token through the model's own
final LayerNorm and class head; `metrics`, `memories`, `importance` and `probes` compute the paper's
analyses from it; `feature_lens` does the same for SAE decoder directions; `run_lens` runs it all.
"""

from rrm_plugin.lens.features import FeatureClasses, feature_class_scores, feature_lens
from rrm_plugin.lens.importance import (
    attention_gradient_importance,
    chefer_rollout_importance,
    perturbation_auc,
    perturbation_curve,
    random_order,
)
from rrm_plugin.lens.memories import class_value_agreement, memory_agreement
from rrm_plugin.lens.metrics import (
    block_identifiability,
    class_rank,
    context_vs_object,
    identifiability_score,
    permutation_test,
)
from rrm_plugin.lens.probes import compare_with_probes, fit_ridge_probes
from rrm_plugin.lens.projection import ClassProjection, project, project_cache, project_images
from rrm_plugin.lens.report import LensConfig, LensResults, run_lens
from rrm_plugin.lens.report_output import write_lens_report

__all__ = [
    "ClassProjection",
    "FeatureClasses",
    "LensConfig",
    "LensResults",
    "attention_gradient_importance",
    "block_identifiability",
    "chefer_rollout_importance",
    "class_rank",
    "class_value_agreement",
    "compare_with_probes",
    "context_vs_object",
    "feature_class_scores",
    "feature_lens",
    "fit_ridge_probes",
    "identifiability_score",
    "memory_agreement",
    "permutation_test",
    "perturbation_auc",
    "perturbation_curve",
    "project",
    "project_cache",
    "project_images",
    "random_order",
    "run_lens",
    "write_lens_report",
]
