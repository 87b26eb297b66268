"""`Table`: the rows as a list, a markdown `repr` and an HTML table; nothing printed."""

import pytest

import rrm_plugin
from rrm_plugin.tables import Table


def test_markdown_and_html_hold_every_cell_in_order():
    rows = [{"a": 1, "b": "x<y"}, {"a": 2, "b": "z"}]
    table = Table(rows, columns=["a", "b"], cells=[["1", "x<y"], ["2", "z"]])
    assert list(table) == rows
    assert repr(table) == "| a | b |\n|---|---|\n| 1 | x<y |\n| 2 | z |"
    assert table._repr_html_() == ("<table><thead><tr><th>a</th><th>b</th></tr></thead><tbody>"
                                   "<tr><td>1</td><td>x&lt;y</td></tr><tr><td>2</td><td>z</td>"
                                   "</tr></tbody></table>")


def test_ragged_cells_are_refused():
    with pytest.raises(ValueError, match="2 rows and 2 columns"):
        Table([{}, {}], columns=["a", "b"], cells=[["1", "2"], ["3"]])


def test_listings_print_nothing_and_show_as_tables(capsys):
    models, releases = rrm_plugin.list_models(), rrm_plugin.list_releases()
    assert capsys.readouterr().out == ""
    assert models[0]["model"] == "digits-vit" and "<td>digits-vit</td>" in models._repr_html_()
    assert repr(models).count("\n") == len(models) + 1
    assert "<td>rrm-digits-vit</td>" in releases._repr_html_()
