"""The low-code schema built from a page's classified components."""

from __future__ import annotations

from services.common.geometry import Box
from services.segmentation.domain.tree import CONTAINER_TYPE, ROOT_ID, PageElement, build_schema


def test_containers_hold_what_lies_inside_them() -> None:
    card = PageElement(Box(100, 100, 600, 400), "Image")
    button = PageElement(Box(120, 300, 220, 340), "Button", "Submit")
    field = PageElement(Box(120, 150, 400, 190), "Input")
    header = PageElement(Box(0, 0, 1280, 60), "Bar", "Home")
    nav_item = PageElement(Box(20, 10, 80, 50), "Text", "Home")
    alone = PageElement(Box(700, 500, 800, 520), "Text", "Footer")
    schema = build_schema([alone, button, card, field, header, nav_item])

    names = list(schema.components)
    assert names == ["Bar-1", "Text-1", "Container-1", "Input-1", "Button-1", "Text-2"]  # reading order
    assert schema.components["Container-1"].component_type == CONTAINER_TYPE  # a holder is a container...
    assert schema.components["Bar-1"].component_type == "Bar"  # ...unless it is a bar with its items
    assert schema.components["Button-1"].text == "Submit"
    tree = schema.tree
    assert tree.id == ROOT_ID
    top = {child.id: child for child in tree.children}
    assert set(top) == {"Bar-1", "Container-1", "Text-2"}
    assert [child.id for child in top["Bar-1"].children] == ["Text-1"]
    assert [child.id for child in top["Container-1"].children] == ["Input-1", "Button-1"]


def test_empty_page() -> None:
    schema = build_schema([])
    assert schema.components == {} and schema.tree.children == []
