"""Checks for the free-text metadata users attach to resources (datasets, models): descriptions and tags."""

from __future__ import annotations

from services.common.errors import InvalidArgument

MAX_DESCRIPTION_CHARS = 10_000
MAX_TAGS = 100
MAX_TAG_CHARS = 100


def check_description(description: str) -> str:
    if len(description) > MAX_DESCRIPTION_CHARS:
        raise InvalidArgument(f"description is longer than {MAX_DESCRIPTION_CHARS} characters")
    return description


def clean_tags(tags: list[str]) -> list[str]:
    """Trimmed, without empties or repeats (first occurrence kept); InvalidArgument past the limits."""
    cleaned = list(dict.fromkeys(tag.strip() for tag in tags if tag.strip()))
    if len(cleaned) > MAX_TAGS or any(len(tag) > MAX_TAG_CHARS for tag in cleaned):
        raise InvalidArgument(f"at most {MAX_TAGS} tags of at most {MAX_TAG_CHARS} characters each")
    return cleaned
