"""services.common.fetch: SSRF-guarded URL downloads, against real HTTP(S) servers started on 127.0.0.1.

Refusals are checked with httpx.AsyncClient replaced by a tripwire, so they prove that no connection was even
attempted. Host names other than localhost are served by a fake resolver (no internet here), which also shows
that the fetch connects to the address it checked instead of resolving again.
"""

from __future__ import annotations

import asyncio
import io
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from PIL import Image

from services.common import fetch
from services.common.fetch import FetchFailed, FetchPolicy, fetch_url

CAP = 64 * 1024
LOCAL = FetchPolicy.from_strings(CAP, 2.0, "127.0.0.1/32")
NO_ALLOW_LIST = FetchPolicy(max_bytes=CAP, timeout_seconds=2.0)
_real_getaddrinfo = socket.getaddrinfo


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 6), (200, 30, 90)).save(buffer, format="PNG")
    return buffer.getvalue()


PNG = png_bytes()


class _TestServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[str] = []  # paths, in arrival order
        self.stop = threading.Event()  # ends slow responses at teardown

    @property
    def port(self) -> int:
        return self.server_address[1]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _TestServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.server.requests.append(self.path)
        url = urlsplit(self.path)
        routes: dict[str, Callable[[], None]] = {
            "/image.png": lambda: self._send(200, PNG, "image/png"),
            "/host": lambda: self._send(200, self.headers["Host"].encode(), "text/plain"),
            "/missing": lambda: self._send(404, b"not here", "text/plain"),
            "/to": lambda: self._redirect(parse_qs(url.query)["target"][0]),
            "/no-location": lambda: self._send(302, b"", "text/plain"),
            "/slow": self._slow,
            "/huge": self._huge_declared,
            "/endless": self._chunked_past_cap,
        }
        if url.path.startswith("/chain/"):
            remaining = int(url.path.removeprefix("/chain/"))
            self._redirect(f"/chain/{remaining - 1}" if remaining > 1 else "/image.png")
        else:
            routes[url.path]()

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _slow(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.end_headers()
        self.wfile.write(b"x" * 10)
        self.wfile.flush()
        self.server.stop.wait(5)
        self.close_connection = True

    def _huge_declared(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(10**12))
        self.end_headers()
        self.close_connection = True

    def _chunked_past_cap(self) -> None:
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        chunk = b"y" * 8192
        try:
            for _ in range(128):  # 1 MiB, far past CAP
                self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up past its cap, as it should
        self.close_connection = True


def _serve(server: _TestServer) -> Iterator[_TestServer]:
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.stop.set()
        server.shutdown()
        server.server_close()


@pytest.fixture
def server() -> Iterator[_TestServer]:
    yield from _serve(_TestServer())


@pytest.fixture
def no_connections(monkeypatch: pytest.MonkeyPatch) -> None:
    def tripwire(*args: object, **kwargs: object) -> None:
        raise AssertionError("a connection was attempted")

    monkeypatch.setattr(httpx, "AsyncClient", tripwire)


Answers = list[list[str]]


@pytest.fixture
def resolver(monkeypatch: pytest.MonkeyPatch) -> dict[str, Answers]:
    """Fake DNS: name -> successive answers (lists of addresses); the last answer repeats."""
    records: dict[str, Answers] = {}

    def getaddrinfo(host: str, port: int, *args: object, **kwargs: object) -> list:
        if host not in records:
            return _real_getaddrinfo(host, port, *args, **kwargs)  # type: ignore[arg-type]
        answers = records[host]
        addresses = answers.pop(0) if len(answers) > 1 else answers[0]
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port)) for address in addresses]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return records


def fetch_failure(url: str, policy: FetchPolicy) -> FetchFailed:
    with pytest.raises(FetchFailed) as caught:
        asyncio.run(fetch_url(url, policy))
    return caught.value


# --- policy ---------------------------------------------------------------------------------------------------


def test_policy_parses_comma_separated_networks_and_addresses() -> None:
    policy = FetchPolicy.from_strings(1000, 5.0, " 127.0.0.1/32, 10.0.0.0/8,::1,192.168.1.7 ")
    assert [str(network) for network in policy.allowed_networks] == [
        "127.0.0.1/32",
        "10.0.0.0/8",
        "::1/128",
        "192.168.1.7/32",
    ]
    assert (policy.max_bytes, policy.timeout_seconds, policy.max_redirects) == (1000, 5.0, 3)


@pytest.mark.parametrize("allowed", ["", "  ", ","])
def test_policy_with_an_empty_allow_list_allows_nothing(allowed: str) -> None:
    assert FetchPolicy.from_strings(1000, 5.0, allowed).allowed_networks == ()


@pytest.mark.parametrize("bad", ["bogus", "10.0.0.1/8", "300.1.1.1", "10.0.0.0/33"])
def test_policy_names_the_invalid_entry(bad: str) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(bad))):
        FetchPolicy.from_strings(1000, 5.0, f"127.0.0.1/32,{bad}")


def test_policy_rejects_non_positive_limits() -> None:
    with pytest.raises(ValueError):
        FetchPolicy(max_bytes=0, timeout_seconds=1.0)
    with pytest.raises(ValueError):
        FetchPolicy(max_bytes=10, timeout_seconds=0)


# --- refusals before any connection ------------------------------------------------------------------------------


@pytest.mark.usefixtures("no_connections")
@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/image.png",
        "http://localhost:8080/image.png",
        "http://2130706433/",  # 127.0.0.1 in decimal, which getaddrinfo accepts
        "http://10.1.2.3/",
        "http://192.168.0.10/",
        "http://169.254.169.254/latest/meta-data/",
        "http://100.64.0.1/",
        "http://0.0.0.0/",
        "http://0.1.2.3/",
        "http://255.255.255.255/",
        "http://224.0.0.1/",
        "http://[::1]/",
        "http://[::]/",
        "http://[::ffff:127.0.0.1]/",
        "http://[::ffff:10.0.0.1]/",
        "http://[::127.0.0.1]/",
        "http://[64:ff9b::a00:1]/",  # NAT64 to 10.0.0.1
        "http://[2002:a00:1::1]/",  # 6to4 through 10.0.0.1
        "http://[fe80::1]/",
        "http://[fec0::1]/",
        "http://[fd00::1]/",
        "http://[ff0e::1]/",
    ],
)
def test_non_public_addresses_are_refused_without_connecting(url: str) -> None:
    failure = fetch_failure(url, NO_ALLOW_LIST)
    assert failure.reason == "refused"
    assert "non-public" in str(failure)


@pytest.mark.usefixtures("no_connections")
def test_a_name_is_refused_if_any_of_its_addresses_is_not_public(resolver: dict[str, Answers]) -> None:
    resolver["mixed.example"] = [["8.8.8.8", "10.0.0.1"]]
    failure = fetch_failure("http://mixed.example/", NO_ALLOW_LIST)
    assert failure.reason == "refused"
    assert "mixed.example" in str(failure) and "10.0.0.1" not in str(failure)


@pytest.mark.usefixtures("no_connections")
@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://example.com/image.png",
        "gopher://example.com/",
        "data:image/png;base64,iVBORw0KGgo=",
        "//example.com/image.png",
        "http:///image.png",
        "http://example.com:99999/",
        "http://user:secret@example.com/image.png",
        "https://user@example.com/image.png",
    ],
)
def test_other_schemes_missing_hosts_and_credentials_are_refused(url: str) -> None:
    assert fetch_failure(url, LOCAL).reason == "refused"


@pytest.mark.parametrize(
    "url",
    ["http://8.8.8.8/a.png", "https://[2606:4700::1]/a.png", "http://[::ffff:8.8.8.8]/", "http://[64:ff9b::808:808]/"],
)
def test_public_addresses_pass_the_checks(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    class Reached(Exception):
        pass

    def stop_at_connection(*args: object, **kwargs: object) -> None:
        raise Reached

    monkeypatch.setattr(httpx, "AsyncClient", stop_at_connection)
    with pytest.raises(Reached):
        asyncio.run(fetch_url(url, NO_ALLOW_LIST))


# --- against a local server ------------------------------------------------------------------------------------


def test_fetches_an_image_from_an_allowed_address(server: _TestServer) -> None:
    assert asyncio.run(fetch_url(f"http://127.0.0.1:{server.port}/image.png", LOCAL)) == PNG


def test_allow_listed_loopback_is_still_refused_without_the_allow_list(server: _TestServer) -> None:
    assert fetch_failure(f"http://127.0.0.1:{server.port}/image.png", NO_ALLOW_LIST).reason == "refused"
    assert server.requests == []


def test_connects_to_the_checked_address_with_the_original_host(
    server: _TestServer, resolver: dict[str, Answers]
) -> None:
    # A rebinding resolver: the second answer would point inside the network. Only one lookup may happen.
    resolver["images.example"] = [["127.0.0.1"], ["10.0.0.1"]]
    body = asyncio.run(fetch_url(f"http://images.example:{server.port}/host", LOCAL))
    assert body == f"images.example:{server.port}".encode()
    assert resolver["images.example"] == [["10.0.0.1"]]


def test_follows_redirects_up_to_the_limit(server: _TestServer) -> None:
    assert asyncio.run(fetch_url(f"http://127.0.0.1:{server.port}/chain/3", LOCAL)) == PNG
    assert server.requests == ["/chain/3", "/chain/2", "/chain/1", "/image.png"]


def test_refuses_too_many_redirects(server: _TestServer) -> None:
    failure = fetch_failure(f"http://127.0.0.1:{server.port}/chain/4", LOCAL)
    assert failure.reason == "refused"
    assert "redirects more than 3 times" in str(failure)
    assert len(server.requests) == 4


@pytest.mark.parametrize("target", ["http://127.0.0.2:{port}/image.png", "http://10.0.0.1/image.png"])
def test_a_redirect_to_a_non_allowed_address_is_refused(server: _TestServer, target: str) -> None:
    url = f"http://127.0.0.1:{server.port}/to?target={target.format(port=server.port)}"
    assert fetch_failure(url, LOCAL).reason == "refused"
    assert len(server.requests) == 1


def test_a_redirect_to_another_scheme_is_refused(server: _TestServer) -> None:
    assert fetch_failure(f"http://127.0.0.1:{server.port}/to?target=file:///etc/passwd", LOCAL).reason == "refused"


def test_a_redirect_without_location_is_an_http_error(server: _TestServer) -> None:
    assert fetch_failure(f"http://127.0.0.1:{server.port}/no-location", LOCAL).reason == "http_status"


def test_not_found_is_an_http_error(server: _TestServer) -> None:
    failure = fetch_failure(f"http://127.0.0.1:{server.port}/missing", LOCAL)
    assert failure.reason == "http_status"
    assert str(failure) == "127.0.0.1 answered HTTP 404"


def test_a_declared_length_over_the_cap_is_refused_before_reading(server: _TestServer) -> None:
    assert fetch_failure(f"http://127.0.0.1:{server.port}/huge", LOCAL).reason == "too_large"


def test_a_chunked_body_is_cut_off_past_the_cap(server: _TestServer) -> None:
    assert fetch_failure(f"http://127.0.0.1:{server.port}/endless", LOCAL).reason == "too_large"


def test_the_cap_is_inclusive(server: _TestServer) -> None:
    exact = FetchPolicy.from_strings(len(PNG), 2.0, "127.0.0.1")
    assert asyncio.run(fetch_url(f"http://127.0.0.1:{server.port}/image.png", exact)) == PNG
    smaller = FetchPolicy.from_strings(len(PNG) - 1, 2.0, "127.0.0.1")
    assert fetch_failure(f"http://127.0.0.1:{server.port}/image.png", smaller).reason == "too_large"


def test_a_slow_body_times_out(server: _TestServer) -> None:
    policy = FetchPolicy.from_strings(CAP, 0.4, "127.0.0.1/32")
    started = time.monotonic()
    failure = fetch_failure(f"http://127.0.0.1:{server.port}/slow", policy)
    assert failure.reason == "timeout"
    assert time.monotonic() - started < 1.5


def test_slow_dns_times_out(monkeypatch: pytest.MonkeyPatch) -> None:
    def slow_getaddrinfo(*args: object, **kwargs: object) -> list:
        time.sleep(0.6)
        return []

    monkeypatch.setattr(socket, "getaddrinfo", slow_getaddrinfo)
    policy = FetchPolicy(max_bytes=CAP, timeout_seconds=0.2)

    async def timed() -> tuple[FetchFailed, float]:
        started = time.monotonic()
        with pytest.raises(FetchFailed) as caught:
            await fetch_url("http://slow-dns.example/", policy)
        return caught.value, time.monotonic() - started

    failure, elapsed = asyncio.run(timed())
    assert failure.reason == "timeout"
    assert elapsed < 0.5


def test_unresolvable_hosts_and_closed_ports_are_unreachable() -> None:
    assert fetch_failure("http://does-not-exist.invalid/", LOCAL).reason == "unreachable"
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    assert fetch_failure(f"http://127.0.0.1:{port}/", LOCAL).reason == "unreachable"


# --- https: certificate and SNI for the original host name while connecting to the IP ---------------------------


@pytest.fixture
def tls_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[_TestServer, list[str | None]]]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    key, certificate = tmp_path / "key.pem", tmp_path / "cert.pem"
    command = ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    command += ["-keyout", str(key), "-out", str(certificate), "-days", "1", "-subj", "/CN=images.test"]
    command += ["-addext", "subjectAltName=DNS:images.test"]
    subprocess.run(
        command,
        check=True,
        capture_output=True,
    )
    server_names: list[str | None] = []
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certificate, key)
    context.sni_callback = lambda connection, name, context: server_names.append(name)  # type: ignore[assignment,return-value]
    server = _TestServer()
    server.socket = context.wrap_socket(server.socket, server_side=True)
    # The client trusts the test certificate through SSL_CERT_FILE, the operator's way to add a CA.
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate))
    fetch._tls_context.cache_clear()
    try:
        for running in _serve(server):
            yield running, server_names
    finally:
        fetch._tls_context.cache_clear()


def test_https_verifies_the_certificate_for_the_original_host(
    tls_server: tuple[_TestServer, list[str | None]], resolver: dict[str, Answers]
) -> None:
    server, server_names = tls_server
    resolver["images.test"] = [["127.0.0.1"]]
    assert asyncio.run(fetch_url(f"https://images.test:{server.port}/image.png", LOCAL)) == PNG
    assert server_names == ["images.test"]


def test_https_refuses_a_certificate_for_another_host(
    tls_server: tuple[_TestServer, list[str | None]], resolver: dict[str, Answers]
) -> None:
    server, _ = tls_server
    resolver["other.test"] = [["127.0.0.1"]]
    assert fetch_failure(f"https://other.test:{server.port}/image.png", LOCAL).reason == "unreachable"
    assert server.requests == []
