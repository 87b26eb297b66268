"""Feature-cards files are untrusted: known keys, types, sizes, PNG / JPEG data URLs only."""

import copy
import json

import pytest

from rrm_plugin.io import CorruptFileError
from rrm_plugin.viewer.cards import read_cards

PNG = "data:image/png;base64,iVBORw0KGgo="
CARD = {"layer": 0, "feature": 7, "hook_name": "blocks.0.hook_resid_post",
        "density_tokens": 0.125, "density_images": 0.5, "max_activation": 4.0,
        "lens_top": [{"class": "seven", "score": 2.0}],
        "top_images": [{"png": PNG, "activation": 4.0},
                       {"png": "data:image/jpeg;base64,/9j/4AAQ", "activation": 3.0}],
        "type": "stroke"}
GOOD = {"schema": "rrm-feature-cards/1", "model": "m", "release": "r", "cards": {"0:7": CARD}}


def write(tmp_path, cards) -> str:
    path = tmp_path / "cards.json"
    path.write_text(json.dumps(cards))
    return str(path)


def edited(change) -> dict:
    cards = copy.deepcopy(GOOD)
    change(cards["cards"]["0:7"])
    return cards


def test_a_dashboards_card_file_reads_back(tmp_path):
    assert read_cards(write(tmp_path, GOOD)) == GOOD


@pytest.mark.parametrize("change, field, found, expected", [
    (lambda c: c["top_images"][0].update(png=PNG + "' onerror='window.__pwned=1"),
     "top_images[0].png", repr(PNG + "' onerror='window.__pwned=1"),
     "a data:image/png or data:image/jpeg base64 URL"),
    (lambda c: c["top_images"][1].update(png="javascript:alert(1)"), "top_images[1].png",
     "'javascript:alert(1)'", "a data:image/png or data:image/jpeg base64 URL"),
    (lambda c: c["top_images"][0].update(png="data:image/svg+xml;base64,PHN2Zz4="),
     "top_images[0].png", "'data:image/svg+xml;base64,PHN2Zz4='",
     "a data:image/png or data:image/jpeg base64 URL"),
    (lambda c: c["top_images"][0].update(png=PNG + "\n"), "top_images[0].png",
     repr(PNG + "\n").replace("\n", "\\n"), "a data:image/png or data:image/jpeg base64 URL"),
    (lambda c: c["top_images"][0].update(onerror="x"), "top_images[0].onerror",
     "an unknown key", "only the keys ['activation', 'png']"),
    (lambda c: c.update(onmouseover="x"), "onmouseover", "an unknown key",
     "only the keys ['density_images', 'density_tokens', 'feature', 'hook_name', 'layer', "
     "'lens_top', 'max_activation', 'top_images', 'type']"),
    (lambda c: c.pop("hook_name"), "hook_name", "nothing", "a value (the key is required)"),
    (lambda c: c.update(type=["<script>"]), "type", "['<script>']",
     "a string of at most 1000 characters or null"),
    (lambda c: c.update(type="x" * 1001), "type", "'" + "x" * 79 + "... (1003 characters)",
     "a string of at most 1000 characters or null"),
    (lambda c: c["lens_top"][0].update(score=float("nan")), "lens_top[0].score", "nan",
     "a finite number"),
    (lambda c: c["lens_top"][0].update(**{"class": 3}), "lens_top[0].class", "3",
     "a string of at most 1000 characters"),
    (lambda c: c.update(density_images=1.5), "density_images", "1.5",
     "a finite number in [0.0, 1.0]"),
    (lambda c: c.update(max_activation=True), "max_activation", "True", "a finite number"),
    (lambda c: c.update(feature=-1), "feature", "-1", "an integer in [0, inf]"),
    (lambda c: c.update(top_images=[{"png": PNG, "activation": 1.0}] * 65), "top_images",
     "65 entries", "at most 64"),
    (lambda c: c.update(lens_top="cat"), "lens_top", "'cat'", "an array"),
])
def test_bad_cards_are_refused_naming_file_card_and_field(tmp_path, change, field, found,
                                                          expected):
    path = write(tmp_path, edited(change))
    with pytest.raises(CorruptFileError) as err:
        read_cards(path)
    assert str(err.value) == f"{path}: card '0:7': field {field}: found {found}, expected " \
                             f"{expected}"


def test_bad_files_are_refused(tmp_path):
    path = write(tmp_path, {**GOOD, "schema": "other"})
    with pytest.raises(CorruptFileError, match=r"^\S+cards.json: field schema: found 'other', "
                       r"expected 'rrm-feature-cards/1' \(a feature-cards file\)$"):
        read_cards(path)
    path = write(tmp_path, {**GOOD, "script": "x"})
    with pytest.raises(CorruptFileError, match=r"cards.json: field script: found an unknown key,"
                       r" expected only the keys \['cards', 'model', 'release', 'schema'\]$"):
        read_cards(path)
    path = write(tmp_path, {**GOOD, "cards": {"1:7": CARD}})
    with pytest.raises(CorruptFileError, match=r"cards.json: card '1:7': field key: found "
                       r"'1:7', expected '0:7' \(its layer and feature\)$"):
        read_cards(path)
    path = write(tmp_path, {**GOOD, "cards": []})
    with pytest.raises(CorruptFileError, match=r"field cards: found \[\], expected an object"):
        read_cards(path)
