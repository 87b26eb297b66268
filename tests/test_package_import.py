"""`import rrm_plugin` and the `rrm` parser stay light and change nothing outside the package; the
SAE releases reach SAELens through the one explicit `register_releases()` call."""

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


LIGHT = f"""
import sys, types
finders = list(sys.meta_path)
import rrm_plugin
from rrm_plugin.cli.main import build_parser
build_parser()
print('HEAVY', sorted(m for m in {HEAVY!r} if m in sys.modules))
print('FINDERS', sys.meta_path == finders, 'PLAIN', type(rrm_plugin) is types.ModuleType)
"""

# Importing every module that talks to SAELens registers nothing; the one call registers all.
REGISTER = """
import rrm_plugin, rrm_plugin.saes.registry, rrm_plugin.zoo.releases
from sae_lens import SAE
from sae_lens.loading.pretrained_sae_loaders import NAMED_PRETRAINED_SAE_LOADERS
from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory
d = get_pretrained_saes_directory()
print('BEFORE', sorted(r for r in d if r.startswith(('rrm', 'prisma-clip'))),
      sorted(n for n in NAMED_PRETRAINED_SAE_LOADERS if 'rrm' in n or 'prisma' in n))
names = rrm_plugin.register_releases()
assert rrm_plugin.register_releases() == names
sae = SAE.from_pretrained('rrm-digits-vit', 'blocks.0.hook_resid_post')
print('REGISTERED', 'rrm-digits-vit' in d, 'rrm-vit-b16-imagenet' in d, sae.cfg.d_sae > 0)
"""


def test_package_and_parser_are_light_plain_and_leave_the_import_system_alone():
    light, register = _run(LIGHT), _run(REGISTER)
    out, err = light.communicate(timeout=600)
    assert "HEAVY []" in out, (out, err[-2000:])
    assert "FINDERS True PLAIN True" in out, (out, err[-2000:])
    out, err = register.communicate(timeout=900)
    assert "BEFORE [] []" in out, (out, err[-2000:])
    assert "REGISTERED True True True" in out, (out, err[-2000:])


def test_the_replacement_subpackage_imports_like_any_other():
    import rrm_plugin.replacement.splice as splice

    assert splice.splice_saes is rrm_plugin.splice_saes
    assert splice.__name__ == "rrm_plugin.replacement.splice"
    assert rrm_plugin.FeatureIntervention.__name__ == "FeatureIntervention"


def test_main_api_is_exported_at_the_top_level():
    from rrm_plugin.attribution.baselines import compute_baselines
    from rrm_plugin.attribution.build import attribute
    from rrm_plugin.attribution.graph import Graph
    from rrm_plugin.circuits.circuit import Circuit
    from rrm_plugin.circuits.influence import prune_by_influence
    from rrm_plugin.lens.report import run_lens
    from rrm_plugin.metrics.faithfulness import evaluate_faithfulness
    from rrm_plugin.replacement.splice import splice_saes
    from rrm_plugin.zoo.releases import register_releases

    for obj in (attribute, Graph, Circuit, prune_by_influence, compute_baselines,
                evaluate_faithfulness, run_lens, splice_saes, register_releases):
        assert getattr(rrm_plugin, obj.__name__) is obj
        assert obj.__name__ in rrm_plugin.__all__
    assert all(hasattr(rrm_plugin, name) for name in rrm_plugin.__all__)
