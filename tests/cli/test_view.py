"""`rrm view GRAPH_DIR`: pages for one trace folder or a folder of them, feature cards, errors."""

import json
import re

from rrm_plugin.circuits.influence import prune_by_influence
from rrm_plugin.cli.main import main
from tests.cli.conftest import expect_user_error
from tests.viewer.conftest import hand_graph


def page_payload(path):
    html = path.read_text()
    return json.loads(re.search(r'id="rrm-data">(.*?)</script>', html, re.S).group(1))


def test_view_a_folder_of_traces(tmp_path, capsys):
    graph = hand_graph()
    for name in ("image_0001", "image_0002"):
        graph.save(tmp_path / name / "graph.lossless")
    assert main(["view", str(tmp_path)]) == 0
    payload = page_payload(tmp_path / "image_0001" / "circuit.html")
    expected = prune_by_influence(graph)
    step = payload["steps"][payload["default_step"]]
    assert step["node_count"] == sum(int(m.sum()) for m in expected.node_masks)
    assert payload["image"] is None  # no model: the graph alone
    index = (tmp_path / "index.html").read_text()
    assert 'href="./image_0001/circuit.html"' in index and \
        'href="./image_0002/circuit.html"' in index
    assert str(tmp_path / "index.html") in capsys.readouterr().out


def test_view_uses_feature_cards(tmp_path):
    hand_graph().save(tmp_path / "graph.lossless")
    card = {"layer": 0, "feature": 7, "hook_name": "blocks.0.hook_resid_post",
            "density_tokens": 0.125, "density_images": 0.5, "max_activation": 4.0,
            "lens_top": [{"class": "seven", "score": 2.0}],
            "top_images": [{"png": "data:image/png;base64,AAAA", "activation": 4.0}],
            "type": "stroke"}
    cards = tmp_path / "cards.json"
    cards.write_text(json.dumps({"schema": "rrm-feature-cards/1", "model": "m", "release": "r",
                                 "cards": {"0:7": card}}))
    assert main(["view", str(tmp_path), "--feature-cards", str(cards)]) == 0
    payload = page_payload(tmp_path / "circuit.html")
    assert payload["cards"]["1"]["type"] == "stroke"  # node 1 = L0/F7
    assert json.loads((tmp_path / "viewer.json").read_text())["cards"]["1"]["density_images"] \
        == 0.5
    assert not (tmp_path / "index.html").exists()


def test_view_rejects_bad_input(tmp_path, capsys):
    expect_user_error(capsys, ["view", str(tmp_path / "missing")],
                      "no folder .*expected an `rrm trace --out`")
    expect_user_error(capsys, ["view", str(tmp_path)], "has no graph.lossless.json")
    hand_graph().save(tmp_path / "graph.lossless")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"schema": "something-else", "cards": {}}))
    expect_user_error(capsys, ["view", str(tmp_path), "--feature-cards", str(bad)],
                      r"bad.json: field schema: found 'something-else', expected "
                      r"'rrm-feature-cards/1' \(a feature-cards file\)$")
    (tmp_path / "viewer.json").write_text(json.dumps({"schema": "x"}))
    expect_user_error(capsys, ["view", str(tmp_path)],
                      r"viewer.json: field schema: found 'x', expected 'rrm-circuit-viewer/1' "
                      r"\(a viewer payload\)$")


def test_view_rereads_its_own_viewer_json_and_refuses_an_edited_one(tmp_path, capsys):
    hand_graph().save(tmp_path / "graph.lossless")
    assert main(["view", str(tmp_path)]) == 0
    first = page_payload(tmp_path / "circuit.html")
    assert main(["view", str(tmp_path)]) == 0  # the viewer.json it wrote passes its checks
    assert page_payload(tmp_path / "circuit.html") == first
    payload = json.loads((tmp_path / "viewer.json").read_text())
    payload["target"]["class"] = 99  # was shown as "target class 99" under a class-1 title
    (tmp_path / "viewer.json").write_text(json.dumps(payload))
    expect_user_error(capsys, ["view", str(tmp_path)],
                      r"viewer.json: field target.class: found 99, expected 1 \(the class of "
                      r"graph.lossless.json\)$")
    payload["target"]["class"] = 1
    payload["cards"] = {"0": {"top_images": [{"png": "javascript:alert(1)", "activation": 1}]}}
    (tmp_path / "viewer.json").write_text(json.dumps(payload))
    expect_user_error(capsys, ["view", str(tmp_path)],
                      r"viewer.json: field cards.0.top_images\[0\].png: found "
                      r"'javascript:alert\(1\)', expected a data:image/png or data:image/jpeg "
                      r"base64 URL$")
    assert page_payload(tmp_path / "circuit.html") == first  # nothing written on refusal


def test_view_refuses_a_hostile_card_image(tmp_path, capsys):
    hand_graph().save(tmp_path / "graph.lossless")
    card = {"layer": 0, "feature": 7, "hook_name": "blocks.0.hook_resid_post",
            "top_images": [{"png": "data:image/png;base64,AAAA' onerror='alert(1)",
                            "activation": 4.0}]}
    cards = tmp_path / "cards.json"
    cards.write_text(json.dumps({"schema": "rrm-feature-cards/1", "cards": {"0:7": card}}))
    expect_user_error(capsys, ["view", str(tmp_path), "--feature-cards", str(cards)],
                      r"cards.json: card '0:7': field top_images\[0\].png: found "
                      r"\"data:image/png;base64,AAAA' onerror='alert\(1\)\", expected a "
                      r"data:image/png or data:image/jpeg base64 URL$")
    assert not (tmp_path / "circuit.html").exists()
