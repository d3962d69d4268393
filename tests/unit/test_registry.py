"""Services find each other by name through services/registry.py (tests/test_docs.py checks that no service imports
another's code)."""

from __future__ import annotations

import pytest

from services.registry import MESH_SERVICES, MeshService, address_of


@pytest.mark.parametrize("service", MESH_SERVICES, ids=lambda s: s.name)
def test_a_peer_is_reached_where_the_service_listens_by_default(
    monkeypatch: pytest.MonkeyPatch, service: MeshService
) -> None:
    prefix = f"VM_{service.name.upper()}_"
    monkeypatch.delenv(f"{prefix}GRPC_HOST", raising=False)
    monkeypatch.delenv(f"{prefix}GRPC_PORT", raising=False)
    own = service.settings()
    assert address_of(service.name).grpc_address == own.grpc_address == f"127.0.0.1:{service.grpc_port}"


@pytest.mark.parametrize("service", MESH_SERVICES, ids=lambda s: s.name)
def test_a_peer_address_comes_from_the_services_variables(
    monkeypatch: pytest.MonkeyPatch, service: MeshService
) -> None:
    # What docker-compose sets: the host is the compose service's name.
    prefix = f"VM_{service.name.upper()}_"
    monkeypatch.setenv(f"{prefix}GRPC_HOST", service.name)
    monkeypatch.setenv(f"{prefix}GRPC_PORT", "7001")
    address = address_of(service.name)
    assert (address.grpc_host, address.grpc_port, address.grpc_address) == (service.name, 7001, f"{service.name}:7001")
    assert address.grpc_address == service.settings().grpc_address
    others = [other for other in MESH_SERVICES if other != service]
    assert all(address_of(other.name).grpc_port == other.grpc_port for other in others)


def test_an_unknown_peer_is_named_in_the_error() -> None:
    with pytest.raises(KeyError, match=r"'billing'.*dataset, training, inference, segmentation, ocr"):
        address_of("billing")


def test_a_port_that_is_not_a_number_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VM_OCR_GRPC_PORT", "fifty")
    with pytest.raises(ValueError, match="grpc_port"):
        address_of("ocr")
