"""circuit_participation on hand-built graphs with known answers, and against a loop oracle."""

import pytest
import torch

from rrm_plugin.attribution.graph import Graph, GraphLayer
from rrm_plugin.circuits.influence import prune_by_influence
from rrm_plugin.features.circuits import circuit_participation


def _layer(hook, block, features, scores, error):
    features = torch.tensor(features)
    scores = torch.tensor(scores)
    return GraphLayer(hook_name=hook, block=block, d_sae=4, features=features, tokens=None,
                      activations=scores.abs(), deltas=scores.abs(), scores=scores,
                      error_score=error)


def hand_graph():
    """Layer 0: F1 (+2), F3 (-1); layer 1: F0 (+3), F2 (+1). Edges rows F1, F3, error."""
    layers = [_layer("blocks.0.hook_resid_post", 0, [1, 3], [2.0, -1.0], 0.1),
              _layer("blocks.1.hook_resid_post", 1, [0, 2], [3.0, 1.0], 0.05)]
    edges = [torch.tensor([[1.5, 0.5], [-1.0, 0.0], [0.1, 0.0]])]
    return Graph(layers=layers, edges=edges, target_class=0, metric="adjusted_logit", value=4.0,
                 logits=torch.zeros(3))


def test_hand_graph_known_answers():
    c = circuit_participation([hand_graph(), hand_graph()], node_threshold=1.0,
                              edge_threshold=1.0)
    assert c.n_graphs == 2
    assert c.count[0].tolist() == [0, 2, 0, 2]
    assert c.positive[0].tolist() == [0, 2, 0, 0]
    assert c.negative[0].tolist() == [0, 0, 0, 2]
    assert c.count[1].tolist() == [2, 0, 2, 0]
    torch.testing.assert_close(c.score_sum[0], torch.tensor([0.0, 4.0, 0.0, -2.0]))
    expected = torch.zeros(5, 4)
    expected[1, 0], expected[1, 2], expected[3, 0], expected[4, 0] = 3.0, 1.0, -2.0, 0.2
    torch.testing.assert_close(c.edges[0], expected)
    torch.testing.assert_close(c.logit_edges, torch.tensor([6.0, 0.0, 2.0, 0.0]))
    up_f, up_w = c.upstream(1, top=2)
    assert up_f[0].tolist() == [1, 3]  # |3.0| > |-2.0|; the error row is not a feature
    torch.testing.assert_close(up_w[0], torch.tensor([3.0, -2.0]))
    assert up_f[2].tolist() == [1, -1]  # only F1 feeds F2
    # The error row (+0.2 into F0) is no upstream feature: the third slot stays empty.
    assert c.upstream(1, top=3)[0][0].tolist() == [1, 3, -1]
    down_f, down_w = c.downstream(0, top=2)
    assert down_f[3].tolist() == [0, -1]
    torch.testing.assert_close(down_w[3], torch.tensor([-2.0, 0.0]))
    assert c.upstream(0)[0].shape == (4, 0) and c.downstream(1)[0].shape == (4, 0)


def test_matches_loop_oracle_on_digits_graphs():
    import rrm_plugin
    from rrm_plugin.attribution import attribute
    from rrm_plugin.zoo.baselines import load_release_baselines

    model = rrm_plugin.load_model("digits-vit")
    saes = rrm_plugin.load_saes("rrm-digits-vit")
    images = rrm_plugin.load_test_set("digits-vit").images[:6]
    graphs = attribute(model, saes, images,
                       baselines=load_release_baselines("rrm-digits-vit", saes))
    c = circuit_participation(graphs)
    sizes = [layer.d_sae for layer in graphs[0].layers]
    count = [[0] * d for d in sizes]
    edges = [[[0.0] * sizes[k + 1] for _ in range(sizes[k] + 1)] for k in range(len(sizes) - 1)]
    for g in graphs:
        p = prune_by_influence(g)
        for k, layer in enumerate(g.layers):
            for j, f in enumerate(layer.features.tolist()):
                if p.node_masks[k][j]:
                    count[k][f] += 1
        for k, block in enumerate(g.edges):
            src = g.layers[k].features.tolist() + [sizes[k]]
            for i, s in enumerate(src):
                for j, t in enumerate(g.layers[k + 1].features.tolist()):
                    if p.edge_masks[k][i, j]:
                        edges[k][s][t] += float(block[i, j])
    assert [x.tolist() for x in c.count] == count
    assert sum(sum(x) for x in count) > 0
    for k in range(len(edges)):
        torch.testing.assert_close(c.edges[k], torch.tensor(edges[k]), atol=1e-5, rtol=1e-5)


def test_bad_input():
    with pytest.raises(ValueError, match="no graphs given"):
        circuit_participation([])
    g = hand_graph()
    g.granularity = "token"
    with pytest.raises(ValueError, match="feature-granularity graphs"):
        circuit_participation([g])
    other = hand_graph()
    other.layers[1].hook_name = "blocks.2.hook_resid_post"
    with pytest.raises(ValueError, match="different SAE layers"):
        circuit_participation([hand_graph(), other])
