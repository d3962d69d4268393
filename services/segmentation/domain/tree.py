"""A page's components as the low-code schema the 004 document returns: `components_map` (name -> type,
position, text) and `components_tree` (the page, then containers holding the components inside them).

A component's parent is the smallest other component that contains its box (a few pixels of slack) and holds
more than itself; a component that holds others is a Container unless its classifier type says otherwise
(a Bar with its items keeps being a Bar). Names are "<type>-<n>", numbered per type in reading order.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from services.common.geometry import Box

CONTAINER_TYPE = "Container"
ROOT_ID = "page"
_CONTAINMENT_SLACK = 2
# Types that may hold other components and keep their own type when they do.
_HOLDING_TYPES = frozenset({"Bar", CONTAINER_TYPE})


@dataclass(frozen=True)
class PageElement:
    box: Box
    component_type: str
    text: str = ""


@dataclass(frozen=True)
class NamedComponent:
    name: str
    component_type: str
    box: Box
    text: str


@dataclass
class TreeNode:
    id: str
    children: list[TreeNode] = field(default_factory=list)


@dataclass(frozen=True)
class PageSchema:
    components: dict[str, NamedComponent]  # in reading order
    tree: TreeNode


def _reading_order(box: Box) -> tuple[int, int, int, int]:
    return box.y0, box.x0, -box.area, box.x1


def _parents(elements: Sequence[PageElement]) -> list[int | None]:
    """Index of each element's parent: the smallest element strictly larger than it that contains it."""
    parents: list[int | None] = []
    for index, element in enumerate(elements):
        holders = [
            other
            for other, candidate in enumerate(elements)
            if other != index
            and candidate.box.area > element.box.area
            and candidate.box.contains(element.box, slack=_CONTAINMENT_SLACK)
        ]
        parents.append(min(holders, key=lambda other: elements[other].box.area) if holders else None)
    return parents


def build_schema(elements: Sequence[PageElement]) -> PageSchema:
    ordered = sorted(elements, key=lambda element: _reading_order(element.box))
    parents = _parents(ordered)
    holds = {parent for parent in parents if parent is not None}
    types = [
        CONTAINER_TYPE if index in holds and element.component_type not in _HOLDING_TYPES else element.component_type
        for index, element in enumerate(ordered)
    ]
    counters: Counter[str] = Counter()
    names = []
    for component_type in types:
        counters[component_type] += 1
        names.append(f"{component_type}-{counters[component_type]}")
    components = {
        name: NamedComponent(name, component_type, element.box, element.text)
        for name, component_type, element in zip(names, types, ordered, strict=True)
    }
    nodes = [TreeNode(name) for name in names]
    root = TreeNode(ROOT_ID)
    for node, parent in zip(nodes, parents, strict=True):
        (root if parent is None else nodes[parent]).children.append(node)
    return PageSchema(components, root)
