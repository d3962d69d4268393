"""Domain errors. Domain code raises these; the gRPC layer maps them to status codes and HTTP statuses.

No gRPC import here on purpose: domain logic stays transport-free. `detail` is the human-readable message
that REST clients receive as {"detail": "..."}.
"""

from __future__ import annotations

import re

# An absolute path of two or more components (not the tail of a relative one); group 1 is its last one.
_SERVER_PATH = re.compile(r"(?<![\w.~-])(?:/[^\s/:'\"]+)+/([^\s/:'\"]+)")


def without_server_paths(text: str) -> str:
    """Absolute paths reduced to their last component (/srv/data/models/.staging-x/model.pt -> model.pt): for
    messages from libraries and subprocesses that reach clients, whose paths only the operator should see."""
    return _SERVER_PATH.sub(lambda match: match.group(1), text)


class ServiceError(Exception):
    http_status = 500

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class InvalidArgument(ServiceError):
    http_status = 400


class NotFound(ServiceError):
    http_status = 404


class Conflict(ServiceError):
    """The request is valid but clashes with the resource's current state."""

    http_status = 409


class PayloadTooLarge(ServiceError):
    http_status = 413


class Unavailable(ServiceError):
    http_status = 503
