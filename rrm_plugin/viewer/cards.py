"""Feature cards (`rrm-feature-cards/1`, the feature dashboards' `cards.json`): read and check.

A cards file is handed in by the user, so it is untrusted: every key is known, every value has
its type and size, and image values are PNG or JPEG data URLs only (the page shows them as
images and refuses anything else too).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rrm_plugin.io import read_json
from rrm_plugin.viewer.fields import Fields

CARDS_SCHEMA = "rrm-feature-cards/1"
MAX_LENS = 100        # feature-lens classes on one card (the dashboards write 5)
MAX_IMAGES = 64       # top images on one card (the dashboards write 8)
# What a card may say; the viewer adds `source` (where the card came from).
CARD_KEYS = frozenset({"layer", "feature", "hook_name", "density_tokens", "density_images",
                       "max_activation", "lens_top", "top_images", "type"})


def check_card(card: Any, fields: Fields, field: str, *, in_payload: bool = False) -> dict:
    """One card's keys, types and sizes; returns it. Cards of a cards file name their feature
    (`hook_name`, `feature`); cards in a viewer payload may carry only the computed lens."""
    at = f"{field}." if field else ""
    required = set() if in_payload else {"hook_name", "feature"}
    optional = (CARD_KEYS | {"source"}) if in_payload else CARD_KEYS
    fields.obj(card, field, required=required, optional=optional - required)
    if "hook_name" in card:
        fields.text(card["hook_name"], f"{at}hook_name")
    for key in ("layer", "feature"):
        if key in card:
            fields.integer(card[key], f"{at}{key}", low=0)
    for key in ("density_tokens", "density_images"):
        if key in card:
            fields.number(card[key], f"{at}{key}", low=0.0, high=1.0)
    if "max_activation" in card:
        fields.number(card["max_activation"], f"{at}max_activation")
    for key in ("type", "source"):
        if key in card:
            fields.text(card[key], f"{at}{key}", nullable=True)
    for i, entry in enumerate(fields.array(card.get("lens_top", []), f"{at}lens_top",
                                           limit=MAX_LENS)):
        where = f"{at}lens_top[{i}]"
        fields.obj(entry, where, required={"class", "score"})
        fields.text(entry["class"], f"{where}.class")
        fields.number(entry["score"], f"{where}.score")
    for i, entry in enumerate(fields.array(card.get("top_images", []), f"{at}top_images",
                                           limit=MAX_IMAGES)):
        where = f"{at}top_images[{i}]"
        fields.obj(entry, where, required={"png", "activation"})
        fields.image_url(entry["png"], f"{where}.png")
        fields.number(entry["activation"], f"{where}.activation")
    return card


def check_cards(cards: Any, where: str) -> dict[str, Any]:
    """A whole `rrm-feature-cards/1` object; `where` names it in errors (e.g. its path)."""
    fields = Fields(where)
    if not isinstance(cards, dict) or cards.get("schema") != CARDS_SCHEMA:
        found = cards.get("schema") if isinstance(cards, dict) else type(cards).__name__
        raise fields.fail("schema", found, f"{CARDS_SCHEMA!r} (a feature-cards file)")
    fields.obj(cards, "", required={"schema", "cards"}, optional={"model", "release"})
    for key in ("model", "release"):
        if key in cards:
            fields.text(cards[key], key, nullable=True)
    if not isinstance(cards["cards"], dict):
        raise fields.fail("cards", cards["cards"], "an object of '<layer>:<feature>' cards")
    for key, card in cards["cards"].items():
        card_fields = Fields(f"{where}: card {key!r}")
        check_card(card, card_fields, "")
        if "layer" in card and key != f"{card['layer']}:{card['feature']}":
            raise card_fields.fail("key", key, f"'{card['layer']}:{card['feature']}' (its layer "
                                   "and feature)")
    return cards


def read_cards(path: str | Path) -> dict[str, Any]:
    """A feature-cards file, every card checked (see `check_cards`)."""
    return check_cards(read_json(Path(path)), str(path))
