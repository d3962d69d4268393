"""Server-side download of a caller-chosen URL (an `image_url`), guarded against server-side request forgery.

A caller who picks the URL must not be able to make the server talk to itself, to the private network or to a
cloud metadata endpoint (169.254.169.254). The defences, in the order a download meets them:

- The URL is parsed once (httpx.URL) and every later step uses the parsed parts, so no second parser can read
  the URL differently. Only http and https, a host is required, credentials (user:pass@) are refused.
- The host is resolved (getaddrinfo in a worker thread) and EVERY resolved address must be public, or inside the
  operator's allow-list (`FetchPolicy.allowed_networks`). "Public" means `is_global` and none of loopback,
  private, link-local, multicast, reserved, unspecified, site-local; the shared range 100.64/10, 0.0.0.0/8 and the
  broadcast address fail `is_global`. IPv6 forms that carry an IPv4 address are judged by that IPv4 address
  (IPv4-mapped ::ffff:a.b.c.d, NAT64 64:ff9b::/96, 6to4 2002::/16); IPv4-compatible ::a.b.c.d is reserved, so
  refused outright.
- The connection goes to an address that was checked: the request URL carries the IP, the Host header carries
  the original host, and for https the `sni_hostname` request extension of httpcore makes TLS send SNI for, and
  verify the certificate against, the original host name (ssl's check_hostname uses server_hostname). No second
  DNS lookup happens, which defeats DNS rebinding. Each connection belongs to a client made for that one request,
  so a connection verified for one host name is never reused for another.
- Redirects are followed by hand, at most `max_redirects`, and each target goes through all the checks again.
- The body is read as sent on the wire (we ask for `Accept-Encoding: identity` and never decompress): a declared
  Content-Length above `max_bytes` is refused before reading, and streaming stops as soon as the count passes
  `max_bytes`, so memory stays within max_bytes plus one network chunk and compression bombs cannot inflate.
  A server that compresses anyway yields compressed bytes, which later fail to decode as an image.
- One asyncio deadline covers everything (DNS, connects, TLS, redirects, body).
- Proxy environment variables are ignored (a proxy would resolve the host itself and bypass the pinning).
  SSL_CERT_FILE / SSL_CERT_DIR are honoured, so operators can trust an internal CA.

Residual risks:
- When the deadline expires during DNS, the await returns at once but the getaddrinfo thread runs on until the
  resolver gives up (threads cannot be interrupted); it holds a worker thread, not the caller.
- The failure reasons differ for "resolves to a non-public address" (refused) and "does not resolve"
  (unreachable), so a caller can learn whether a host name exists in the server's DNS. The addresses themselves
  are never revealed.
- Scoped IPv6 addresses (fe80::1%eth0) cannot be put in a URL; they are refused anyway unless allow-listed.
- Ports are not restricted (by design): any port of a public or allow-listed address can receive a plain GET
  (no caller-controlled headers or body), so allow-list only networks whose every port may see such requests.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
import ssl
from dataclasses import dataclass
from typing import Literal

import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
FetchFailureReason = Literal["refused", "unreachable", "http_status", "too_large", "timeout"]

_DEFAULT_PORTS = {"http": 80, "https": 443}
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_NAT64_PREFIX = ipaddress.IPv6Network("64:ff9b::/96")
_REQUEST_HEADERS = {"Accept": "image/*, */*;q=0.5", "Accept-Encoding": "identity", "User-Agent": "VisionMesh"}


class FetchFailed(Exception):
    """The URL could not be fetched; `reason` says why, the message says it to a human (hosts, never addresses)."""

    def __init__(self, reason: FetchFailureReason, message: str) -> None:
        super().__init__(message)
        self.reason: FetchFailureReason = reason


@dataclass(frozen=True)
class FetchPolicy:
    max_bytes: int
    timeout_seconds: float
    allowed_networks: tuple[IPNetwork, ...] = ()  # non-public networks the operator trusts anyway
    max_redirects: int = 3

    def __post_init__(self) -> None:
        if self.max_bytes <= 0 or self.timeout_seconds <= 0 or self.max_redirects < 0:
            raise ValueError(f"invalid fetch policy: {self}")

    @classmethod
    def from_strings(cls, max_bytes: int, timeout_seconds: float, allowed: str) -> FetchPolicy:
        """A policy whose allow-list is a comma-separated list of networks or addresses ("10.0.0.0/8,::1")."""
        networks: list[IPNetwork] = []
        for entry in (part.strip() for part in allowed.split(",")):
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry))  # strict: "10.0.0.1/8" is more likely a typo
            except ValueError:
                raise ValueError(f"invalid network in the fetch allow-list: {entry!r}") from None
        return cls(max_bytes=max_bytes, timeout_seconds=timeout_seconds, allowed_networks=tuple(networks))


async def fetch_url(url: str, policy: FetchPolicy) -> bytes:
    """The body of `url`, fetched under `policy`'s limits; raises FetchFailed (see the module docstring)."""
    target = _checked_url(url)
    try:
        async with asyncio.timeout(policy.timeout_seconds):
            return await _fetch_following_redirects(target, policy)
    except TimeoutError:
        raise FetchFailed(
            "timeout", f"fetching from {target.host} took longer than {policy.timeout_seconds:g} s"
        ) from None


async def _fetch_following_redirects(url: httpx.URL, policy: FetchPolicy) -> bytes:
    for _ in range(policy.max_redirects + 1):
        addresses = await _permitted_addresses(url, policy.allowed_networks)
        outcome = await _fetch_from_any(url, addresses, policy.max_bytes)
        if isinstance(outcome, bytes):
            return outcome
        url = _checked_url(outcome, base=url)
    raise FetchFailed("refused", f"{url.host} redirects more than {policy.max_redirects} times")


def _checked_url(reference: str, base: httpx.URL | None = None) -> httpx.URL:
    """`reference` (resolved against `base`, as a redirect Location is) if it is a URL we may fetch."""
    try:
        url = base.join(reference) if base is not None else httpx.URL(reference)
    except httpx.InvalidURL:
        raise FetchFailed("refused", "not a valid URL") from None
    if url.scheme not in _DEFAULT_PORTS:
        raise FetchFailed("refused", f"only http and https URLs can be fetched, not {url.scheme or 'scheme-less'} ones")
    if not url.raw_host:
        raise FetchFailed("refused", "the URL has no host")
    if url.port is not None and not 0 < url.port < 65536:
        raise FetchFailed("refused", f"port {url.port} does not exist")
    if url.userinfo:
        raise FetchFailed("refused", "URLs with credentials (user:password@) are not fetched")
    return url


async def _permitted_addresses(url: httpx.URL, allowed: tuple[IPNetwork, ...]) -> list[IPAddress]:
    """Every address `url`'s host resolves to, in resolver order; refused unless all of them are permitted."""
    port = url.port or _DEFAULT_PORTS[url.scheme]
    try:
        infos = await asyncio.to_thread(socket.getaddrinfo, url.raw_host.decode("ascii"), port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:  # gaierror is an OSError; over-long labels fail IDNA encoding
        raise FetchFailed("unreachable", f"could not resolve host {url.host}") from exc
    addresses = list(dict.fromkeys(ipaddress.ip_address(info[4][0]) for info in infos))
    if not addresses or not all(_is_permitted(address, allowed) for address in addresses):
        raise FetchFailed("refused", f"host {url.host} resolves to a non-public address")
    return addresses


def _is_permitted(address: IPAddress, allowed: tuple[IPNetwork, ...]) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # the socket talks IPv4 to this address
    # Membership is only meaningful within one IP version.
    if any(address.version == network.version and address in network for network in allowed):
        return True
    return _is_public(address)


def _is_public(address: IPAddress) -> bool:
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:  # checked first: the NAT64 prefix lies inside the reserved ::/8
            return _is_public(embedded)
        if address.is_site_local:
            return False
    return address.is_global and not (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
    )


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address that packets to `address` end up at through a translator (NAT64, 6to4), if any."""
    if address in _NAT64_PREFIX:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address.sixtofour


async def _fetch_from_any(url: httpx.URL, addresses: list[IPAddress], max_bytes: int) -> bytes | str:
    """Try the checked addresses in resolver order until one accepts the connection, as ordinary clients do."""
    failure: httpx.TransportError | None = None
    for address in addresses:
        try:
            return await _fetch_from(url, address, max_bytes)
        except httpx.ConnectError as exc:  # refused connection or failed TLS handshake: try the next address
            failure = exc
        except httpx.TransportError as exc:  # the server accepted, then broke the protocol or the connection
            failure = exc
            break
    raise FetchFailed("unreachable", f"could not fetch from {url.host}: connection failed") from failure


async def _fetch_from(url: httpx.URL, address: IPAddress, max_bytes: int) -> bytes | str:
    """GET `url` from the server at `address`: the body, or the Location a redirect points to."""
    pinned = url.copy_with(host=str(address))
    headers = {**_REQUEST_HEADERS, "Host": url.netloc.decode("ascii")}
    # Certificates are checked against the original host name, not the IP the connection goes to.
    extensions = {"sni_hostname": url.raw_host.decode("ascii")}
    tls = await asyncio.to_thread(_tls_context)
    async with (
        httpx.AsyncClient(verify=tls, trust_env=False, timeout=None, follow_redirects=False) as client,
        client.stream("GET", pinned, headers=headers, extensions=extensions) as response,
    ):
        status = response.status_code
        if status in _REDIRECT_STATUSES:
            location = response.headers.get("Location")
            if location is None:
                raise FetchFailed("http_status", f"{url.host} answered HTTP {status} without a Location")
            return location
        if not response.is_success:
            raise FetchFailed("http_status", f"{url.host} answered HTTP {status}")
        too_large = FetchFailed("too_large", f"the file at {url.host} is larger than {max_bytes} bytes")
        declared = response.headers.get("Content-Length")  # h11 has checked it is one run of ASCII digits
        if declared is not None and int(declared) > max_bytes:
            raise too_large
        chunks: list[bytes] = []
        received = 0
        async for chunk in response.aiter_raw():
            received += len(chunk)
            if received > max_bytes:
                raise too_large
            chunks.append(chunk)
        return b"".join(chunks)


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """Certificate-verifying context shared by all fetches (building one costs ~50 ms); certifi or SSL_CERT_*."""
    return httpx.create_ssl_context(trust_env=True)
