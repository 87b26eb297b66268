"""`rrm trace --granularity token --token-top-k K`: sparse token graphs from the command line."""

import json

from rrm_plugin.attribution.graph import Graph
from rrm_plugin.cli.main import main
from tests.cli.conftest import expect_user_error


def test_trace_keeps_each_token_nodes_strongest_in_edges(tmp_path):
    out = tmp_path / "o"
    assert main(["trace", "0", "--granularity", "token", "--token-top-k", "4", "--no-viewer",
                 "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    graph = Graph.load(out / "graph.lossless")
    assert graph.granularity == "token" and graph.sparse_edges
    for edge in graph.edges:
        per_target = edge.to_dense().ne(0).sum(0)
        assert int(per_target.max()) <= 4 + 1  # 4 sources and the error edge
        assert edge._nnz() > 0
    assert summary["circuit_nodes"] > 0 and summary["circuit_edges"] > 0


def test_token_top_k_needs_token_granularity_and_no_viewer(tmp_path, capsys):
    args = ["trace", "0", "--out", str(tmp_path / "o"), "--token-top-k", "4"]
    expect_user_error(capsys, [*args, "--no-viewer"],
                      "--token-top-k needs --granularity token and --no-viewer")
    expect_user_error(capsys, [*args, "--granularity", "token"],
                      "--token-top-k needs --granularity token and --no-viewer")
    expect_user_error(capsys, ["trace", "0", "--out", str(tmp_path / "o"), "--granularity",
                               "token", "--no-viewer", "--token-top-k", "0"],
                      "--token-top-k must be at least 1, got 0")
