"""Fetch a query image from a URL a stranger typed, without letting the server be used as a proxy.

A demo that downloads whatever URL it is given can be pointed at the machine's own services
(``http://127.0.0.1:…``), the local network or a cloud metadata endpoint (``169.254.169.254``):
server-side request forgery. :func:`fetch_url` therefore

- accepts only ``http`` and ``https`` URLs with a host;
- resolves the host once, refuses it when *any* of its addresses is private, loopback,
  link-local, multicast, reserved or unspecified (unless ``allow_private``), and connects to
  the address it checked (so a DNS answer that changes between check and connect cannot
  slip through);
- follows at most ``max_redirects`` redirects, checking each new URL the same way;
- stops reading past ``max_bytes`` and gives up after ``timeout`` seconds in all.

Written with ``http.client`` rather than ``requests``/``urllib``: those resolve the host again
when they connect and follow redirects on their own, which is exactly what must be checked.
"""
from __future__ import annotations

import http.client
import ipaddress
import socket
import time
from collections.abc import Callable
from urllib.parse import urljoin, urlsplit

__all__ = ["UrlFetchError", "check_address", "check_url", "fetch_url"]

ALLOWED_SCHEMES = ("http", "https")
REDIRECT_CODES = (301, 302, 303, 307, 308)
_CHUNK = 64 * 1024

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class UrlFetchError(ValueError):
    """A URL that is refused or could not be fetched; the message says which and why."""


def check_address(ip: str | Address, allow_private: bool = False) -> Address:
    """Return ``ip`` parsed, or raise when it is not a public unicast address (and not allowed).

    IPv4-mapped IPv6 addresses (``::ffff:127.0.0.1``) are judged by the IPv4 address they carry.
    """
    addr = ipaddress.ip_address(ip)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if allow_private:
        return addr
    # most specific first: 127.0.0.1 and 169.254.0.1 are also "private" to the ipaddress module
    kinds = [("loopback", addr.is_loopback), ("link-local", addr.is_link_local), ("multicast", addr.is_multicast),
             ("unspecified", addr.is_unspecified), ("reserved", addr.is_reserved), ("private", addr.is_private),
             ("non-global", not addr.is_global)]
    bad = [name for name, hit in kinds if hit]
    if bad:
        raise UrlFetchError(f"refusing to fetch from {addr}: it is a {bad[0]} address "
                            "(start the app with --allow-private-urls to allow it)")
    return addr


def _resolve(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UrlFetchError(f"cannot resolve the host {host!r}: {exc}") from None
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def check_url(url: str, allow_private: bool = False,
              resolve: Callable[[str, int], list[str]] = _resolve) -> tuple[str, str, int, Address]:
    """(scheme, host, port, address to connect to) for an acceptable URL, else :class:`UrlFetchError`.

    Every address the host resolves to must pass :func:`check_address`, so a name that maps to
    both a public and a private address is refused.
    """
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in ALLOWED_SCHEMES:
        raise UrlFetchError(f"only http and https URLs can be fetched, not {scheme or 'a URL without a scheme'}:"
                            f" {url!r}")
    try:
        host, port = parts.hostname, parts.port or (443 if scheme == "https" else 80)
    except ValueError as exc:  # a port that is not a number or out of range
        raise UrlFetchError(f"bad URL {url!r}: {exc}") from None
    if not host:
        raise UrlFetchError(f"the URL {url!r} has no host")
    addresses = resolve(host, port)
    if not addresses:
        raise UrlFetchError(f"the host {host!r} has no address")
    checked = [check_address(a, allow_private) for a in addresses]
    return scheme, host, port, checked[0]


def _connection(scheme: str, host: str, port: int, address: Address, timeout: float) -> http.client.HTTPConnection:
    """An HTTP(S) connection to ``host`` (Host header, TLS name check) that dials only ``address``."""
    cls = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
    conn = cls(host, port, timeout=timeout)

    def pinned(_addr, timeout=timeout, source_address=None):
        return socket.create_connection((str(address), port), timeout, source_address)

    conn._create_connection = pinned  # http.client's own hook for opening the socket
    return conn


def _read_capped(sock: socket.socket | None, resp: http.client.HTTPResponse, url: str, max_bytes: int,
                 deadline: float, timeout: float) -> bytes:
    """The body, read in chunks: refused as soon as it passes ``max_bytes`` or the deadline."""
    length = resp.getheader("Content-Length")
    if length and length.isdigit() and int(length) > max_bytes:
        raise UrlFetchError(f"{url} is {int(length)} bytes, over the {max_bytes}-byte cap")
    chunks, total = [], 0
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise UrlFetchError(f"fetching {url} took longer than {timeout:g} s")
        if sock is not None:  # each read may wait only for what is left of the whole budget
            sock.settimeout(left)
        chunk = resp.read1(_CHUNK) if hasattr(resp, "read1") else resp.read(_CHUNK)
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if total > max_bytes:
            raise UrlFetchError(f"{url} is larger than the {max_bytes}-byte cap; stopped reading")
        chunks.append(chunk)


def fetch_url(url: str, max_bytes: int = 10 * 2**20, timeout: float = 10.0, allow_private: bool = False,
              max_redirects: int = 3) -> bytes:
    """The body of ``url`` (GET), under the checks described in the module docstring."""
    deadline = time.monotonic() + timeout
    for _ in range(max_redirects + 1):
        scheme, host, port, address = check_url(url, allow_private)
        left = deadline - time.monotonic()
        if left <= 0:
            raise UrlFetchError(f"fetching {url} took longer than {timeout:g} s")
        conn = _connection(scheme, host, port, address, left)
        try:
            parts = urlsplit(url.strip())
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            conn.request("GET", target, headers={"User-Agent": "simsearch-app", "Accept": "image/*"})
            sock = conn.sock  # kept: getresponse() may hand the socket over to the response
            resp = conn.getresponse()
            if resp.status in REDIRECT_CODES:
                location = resp.getheader("Location")
                if not location:
                    raise UrlFetchError(f"{url} answered {resp.status} without a Location header")
                url = urljoin(url, location)
                continue
            if resp.status != 200:
                raise UrlFetchError(f"{url} answered HTTP {resp.status} {resp.reason}")
            return _read_capped(sock, resp, url, max_bytes, deadline, timeout)
        except (TimeoutError, socket.timeout):
            raise UrlFetchError(f"fetching {url} took longer than {timeout:g} s") from None
        except (OSError, http.client.HTTPException) as exc:
            raise UrlFetchError(f"cannot fetch {url}: {type(exc).__name__}: {exc}") from None
        finally:
            conn.close()
    raise UrlFetchError(f"more than {max_redirects} redirects, the last to {url}")
