"""Top-activating patches of circuit latents, against a brute-force scan of the spliced cache."""

import pytest
import torch

from rrm_plugin.circuits.figure import top_patches
from rrm_plugin.replacement.splice import splice_saes


def test_top_patches_are_the_largest_patch_activations(vit, saes, reference_images):
    hook = "blocks.1.hook_resid_post"
    images = reference_images[:6]
    with torch.no_grad(), splice_saes(vit, saes, keep_error=True):
        _, cache = vit.run_with_cache(images, names_filter=[f"{hook}.hook_sae_acts_post"])
    acts = cache[f"{hook}.hook_sae_acts_post"]  # [image, token, latent]; token 0 is CLS
    latents = [int(i) for i in acts[:, 1:].amax((0, 1)).topk(3).indices]
    found = top_patches(vit, saes, images, {hook: latents}, n_examples=4, batch_size=4)
    assert set(found) == {(hook, f) for f in latents}
    for f in latents:
        scan = sorted(((float(acts[i, t, f]), i, t) for i in range(len(images))
                       for t in range(1, acts.shape[1]) if acts[i, t, f] > 0), reverse=True)
        got = found[(hook, f)]
        assert [(e.image, e.token) for e in got] == [(i, t) for _, i, t in scan[:4]]
        assert [e.activation for e in got] == pytest.approx([v for v, _, _ in scan[:4]], rel=1e-5)
