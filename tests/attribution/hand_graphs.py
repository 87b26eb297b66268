"""Small graphs written out by hand, with dyadic numbers so every float survives float32 exactly."""

import torch

from rrm_plugin.attribution.graph import Graph, GraphLayer

T = torch.tensor


def feature_hand_graph() -> Graph:
    """Block 0: latents 1, 4; block 1: latents 0, 2, 5; logits [1, 3, 2], class 1 (adjusted 1.0)."""
    low = GraphLayer("blocks.0.hook_resid_post", 0, 6, T([1, 4]), None, T([2.0, 3.0]),
                     T([1.5, -0.5]), T([0.75, -0.25]), 0.125)
    top = GraphLayer("blocks.1.hook_resid_post", 1, 6, T([0, 2, 5]), None, T([1.0, 0.0, 4.0]),
                     T([0.5, -1.0, 2.0]), T([1.0, -0.5, 2.0]), -0.5)
    # Rows: latent 1, latent 4, error of block 0; columns: latents 0, 2, 5 of block 1.
    edges = [T([[0.5, 0.0, 0.25], [-0.25, 0.0, 0.0], [0.125, 0.0, -1.0]])]
    return Graph([low, top], edges, target_class=1, metric="adjusted_logit", value=1.0,
                 logits=T([1.0, 3.0, 2.0]), metadata={"image": 7})


def sparse_token_hand_graph() -> Graph:
    """Token graph (5 tokens, d_sae 4) whose edge matrix is sparse, one stored entry zero."""
    low = GraphLayer("blocks.2.hook_resid_post", 2, 4, T([3, 0]), T([1, 4]), T([1.0, 2.0]),
                     T([1.0, 2.0]), T([0.5, -0.75]), 0.25)
    top = GraphLayer("blocks.3.hook_resid_post", 3, 4, T([1, 1]), T([0, 2]), T([3.0, 1.0]),
                     T([2.0, 1.0]), T([1.5, -0.5]), -0.125)
    edges = [torch.sparse_coo_tensor(T([[0, 1, 2, 2], [0, 1, 0, 1]]), T([0.5, -0.75, 0.0, 0.25]),
                                     (3, 2), check_invariants=True).coalesce()]
    return Graph([low, top], edges, target_class=0, metric="logit", value=4.0,
                 logits=T([4.0, -1.0]), granularity="token", n_tokens=5, linearised=False)
