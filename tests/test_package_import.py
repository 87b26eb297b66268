"""`import rrm_plugin` and the `rrm` parser stay light, and the SAE releases are registered with
SAELens whichever module imports SAELens first (issue 15 section 5)."""

import os
import subprocess
import sys

import rrm_plugin

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(rrm_plugin.__file__)))
HEAVY = ("torch", "sae_lens", "vit_prisma", "transformer_lens", "matplotlib", "numpy")


def _run(code: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": ROOT, "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-c", code], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_package_and_parser_import_nothing_heavy_and_releases_register_in_any_order():
    light = _run("import sys, rrm_plugin\nfrom rrm_plugin.cli.main import build_parser\n"
                 f"build_parser()\nprint('HEAVY', sorted(m for m in {HEAVY!r} "
                 "if m in sys.modules))")
    orders = {}
    for first in ("rrm_plugin.zoo.releases", "rrm_plugin.saes.registry", "rrm_plugin"):
        orders[first] = _run(
            f"import {first}\nfrom sae_lens import SAE\n"
            "from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory\n"
            "d = get_pretrained_saes_directory()\n"
            "SAE.from_pretrained('rrm-digits-vit', 'blocks.0.hook_resid_post')\n"
            "print('REGISTERED', 'rrm-digits-vit' in d, 'rrm-vit-b16-imagenet' in d)")
    out, err = light.communicate(timeout=600)
    assert "HEAVY []" in out, (out, err[-2000:])
    for first, proc in orders.items():
        out, err = proc.communicate(timeout=900)
        assert "REGISTERED True True" in out, (first, err[-2000:])


def test_replacement_is_the_context_manager_after_the_subpackage_loads():
    from rrm_plugin.replacement.splice import replacement

    assert rrm_plugin.replacement is replacement
    assert rrm_plugin.FeatureIntervention.__name__ == "FeatureIntervention"


def test_main_api_is_exported_at_the_top_level():
    from rrm_plugin.attribution.baselines import compute_baselines
    from rrm_plugin.attribution.build import attribute
    from rrm_plugin.attribution.graph import Graph
    from rrm_plugin.circuits.circuit import Circuit
    from rrm_plugin.circuits.influence import prune_by_influence
    from rrm_plugin.lens.report import run_lens
    from rrm_plugin.metrics.faithfulness import evaluate_faithfulness

    for obj in (attribute, Graph, Circuit, prune_by_influence, compute_baselines,
                evaluate_faithfulness, run_lens):
        assert getattr(rrm_plugin, obj.__name__) is obj
        assert obj.__name__ in rrm_plugin.__all__
