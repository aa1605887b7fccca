"""Where a webhook may POST: the portal's own guard against server-side request forgery
(docs/monitoring.md, "Where the POST comes from").

A webhook URL is a Contributor's way to make the portal's host send a request. By default the
portal refuses a destination whose host resolves to an address that is not on the public
internet: loopback, private (RFC 1918, IPv6 unique local), link-local (where cloud metadata
services listen), multicast, unspecified, reserved and shared (carrier-grade NAT) addresses,
IPv4 and IPv6 alike, with the IPv4 address inside a v4-mapped, 6to4, Teredo or NAT64 IPv6
address checked too. ``HAVEN_WEBHOOK_ALLOWED_NETWORKS`` lets an admin allow networks.

Each lookup waits at most ``HAVEN_WEBHOOK_RESOLVE_SECONDS``: a resolver that hangs cannot hold
a webhook's form (and the thread serving it) for as long as it takes. The system's
``getaddrinfo`` cannot be interrupted, so it runs in a daemon thread and the caller stops
waiting: at most ``_LOOKUP_THREADS`` lookups run at once in a process, so lookups that hang
hold at most that many threads (never the process's exit), and while they do, later lookups
wait for a free one within the same bound and time out too.

The check runs when a webhook is saved and again at every send, since a name may resolve
differently later (DNS rebinding): the sender resolves the name once, checks every address,
and connects to a checked address itself (``_PinnedAdapter``), with the URL's host name kept
for TLS (SNI and the certificate check) and in the ``Host`` header. Through an HTTP(S) proxy
the proxy connects; the portal checks what the name resolves to on its own host, and the rest
is the proxy's rule.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import threading
import time
from collections.abc import Iterable
from urllib.parse import urlsplit

import requests
from django.conf import settings
from requests.adapters import HTTPAdapter
from requests.utils import select_proxy
from urllib3.exceptions import ConnectTimeoutError, MaxRetryError, NewConnectionError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

SETTING = "HAVEN_WEBHOOK_ALLOWED_NETWORKS"
_SHARED = ipaddress.ip_network("100.64.0.0/10")  # RFC 6598: not in ipaddress's private list
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class DestinationRefused(Exception):
    """The URL's host is, or resolves to, an address the portal does not POST to; the
    message names the host and the address and says how to allow it. Never retried."""


class HostUnresolved(Exception):
    """The host name does not resolve (now): a send may succeed later."""


class ResolveTimedOut(HostUnresolved):
    """The resolver did not answer within ``HAVEN_WEBHOOK_RESOLVE_SECONDS``: nothing is known
    about the host, so a webhook is not saved with it (a send tries again later)."""


# At most this many lookups at once in a process; each runs in a daemon thread of its own,
# so one that never returns holds neither the caller nor the process's exit.
_LOOKUP_THREADS = 4
_lookup_slots = threading.BoundedSemaphore(_LOOKUP_THREADS)


def _new_slots() -> None:
    """A forked child starts with every slot free (the parent's lookup threads are not in it)."""
    global _lookup_slots
    _lookup_slots = threading.BoundedSemaphore(_LOOKUP_THREADS)


os.register_at_fork(after_in_child=_new_slots)


def _getaddrinfo_within(host: str, port: int, seconds: float) -> list:
    """``socket.getaddrinfo(host, port)`` if it answers within ``seconds``, waiting first
    for a free slot within the same time; ResolveTimedOut otherwise."""
    deadline = time.monotonic() + seconds
    slots = _lookup_slots
    if not slots.acquire(timeout=seconds):
        raise ResolveTimedOut
    answer: dict = {}
    done = threading.Event()

    def lookup() -> None:
        try:
            answer["found"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except BaseException as exc:  # handed to the caller, who raises it
            answer["error"] = exc
        finally:
            slots.release()
            done.set()

    threading.Thread(target=lookup, name="haven-resolve", daemon=True).start()
    if not done.wait(max(0.0, deadline - time.monotonic())):
        raise ResolveTimedOut
    if "error" in answer:
        raise answer["error"]
    return answer["found"]


def _allowed_networks() -> tuple[IPNetwork, ...]:
    return tuple(getattr(settings, SETTING, ()))


def _embedded_v4(ip: IPAddress) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries, that a gateway would deliver to."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return []
    found = []
    if ip.sixtofour is not None:
        found.append(ip.sixtofour)
    if ip.teredo is not None:
        found.append(ip.teredo[1])
    if ip in _NAT64:
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return found


def _kind(ip: IPAddress) -> str:
    """What makes ``ip`` no destination for a webhook, or '' for a public address."""
    if ip.is_loopback:
        return "a loopback address (the portal's own host)"
    if ip.is_unspecified:
        return "the unspecified address (the portal's own host)"
    if ip.is_link_local:
        return "a link-local address (cloud metadata services listen there)"
    if ip.is_multicast:
        return "a multicast address"
    if ip in _SHARED:
        return "a shared address (carrier-grade NAT)"
    if ip.is_reserved:  # before private: ipaddress counts 240.0.0.0/4 as both
        return "a reserved address"
    if ip.is_private:
        return "a private address"
    if not ip.is_global:
        return "not a public address"
    return ""


def _problem(ip: IPAddress, allowed: tuple[IPNetwork, ...]) -> str:
    """Why the portal will not connect to ``ip``, as the end of a sentence that names it
    (``'a private address'``, ``'which leads to 127.0.0.1, a loopback address'``), or ''."""
    if any(ip.version == net.version and ip in net for net in allowed):
        return ""
    # A NAT64 address is judged by the IPv4 address its gateway delivers to alone (the
    # prefix itself counts as reserved, and an IPv6-only host reaches every IPv4 site so).
    kind = "" if ip in _NAT64 else _kind(ip)
    if kind:
        return kind
    for inner in _embedded_v4(ip):
        if any(inner.version == net.version and inner in net for net in allowed):
            continue
        kind = _kind(inner)
        if kind:
            return f"which leads to {inner}, {kind}"
    return ""


def _unmapped(ip: IPAddress) -> IPAddress:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1 on a dual-stack socket
    return ip


def address_problem(ip: IPAddress, allowed: Iterable[IPNetwork] | None = None) -> str:
    """Why the portal will not connect to ``ip`` (``'10.1.2.3 is a private address'``), or ''."""
    ip = _unmapped(ip)
    problem = _problem(ip, _allowed_networks() if allowed is None else tuple(allowed))
    if not problem:
        return ""
    return _sentence(str(ip), ip, problem)


def _sentence(host: str, ip: IPAddress, problem: str) -> str:
    if host.strip("[]") != str(ip):
        return f"{host} resolves to {ip}, {problem}"
    if problem.startswith("which "):
        return f"{ip} {problem.removeprefix('which ')}"
    return f"{ip} is {problem}"


def resolve(host: str, port: int) -> list[IPAddress]:
    """The addresses ``host`` resolves to (a literal, in any form the system's resolver
    reads, such as ``2130706433`` or ``0177.0.0.1``, included), in the resolver's order."""
    seconds = settings.HAVEN_WEBHOOK_RESOLVE_SECONDS
    try:
        found = _getaddrinfo_within(host, port, seconds)
    except ResolveTimedOut:
        raise ResolveTimedOut(
            f"Could not resolve {host} in time: the portal's DNS resolver did not answer "
            f"within {seconds:g} seconds. Check the name, or try again in a moment."
        ) from None
    except (socket.gaierror, UnicodeError, ValueError) as exc:
        raise HostUnresolved(f"Could not resolve {host}.") from exc
    addresses: list[IPAddress] = []
    for _family, _type, _proto, _name, sockaddr in found:
        ip = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if ip not in addresses:
            addresses.append(ip)
    if not addresses:
        raise HostUnresolved(f"Could not resolve {host}.")
    return addresses


def checked_addresses(host: str, port: int) -> list[IPAddress]:
    """``host``'s addresses, all of them allowed, or DestinationRefused naming the first
    that is not (a name with one private address among public ones is refused: which one a
    connection would use is the resolver's choice). HostUnresolved when it does not resolve."""
    allowed = _allowed_networks()
    addresses = [_unmapped(ip) for ip in resolve(host, port)]
    for ip in addresses:
        problem = _problem(ip, allowed)
        if not problem:
            continue
        raise DestinationRefused(
            f"{_sentence(host, ip, problem)}; allow its network with {SETTING}."
        )
    return addresses


def _port(parts) -> int:
    return parts.port or (443 if parts.scheme.lower() == "https" else 80)


def url_problem(url: str) -> str:
    """The save-time check of a well-formed http(s) URL: why its host is refused, or ''.
    A name that does not resolve now is accepted: every send checks it again. A lookup the
    resolver did not answer in time is refused: the name may well resolve to a forbidden
    address, and the person is waiting."""
    parts = urlsplit(url)
    try:
        checked_addresses(parts.hostname or "", _port(parts))
    except (DestinationRefused, ResolveTimedOut) as exc:
        return str(exc)
    except HostUnresolved:
        return ""
    return ""


# --- sending ---------------------------------------------------------------------------------
class _PinnedAdapter(HTTPAdapter):
    """Connects to ``address`` whatever the URL's host resolves to by then, and keeps the
    host name for TLS: the server name (SNI) and the certificate's name check."""

    def __init__(self, *, address: IPAddress, hostname: str) -> None:
        self.address, self.hostname = address, hostname
        super().__init__(max_retries=0)

    def build_connection_pool_key_attributes(self, request, verify, cert=None):
        host_params, pool_kwargs = super().build_connection_pool_key_attributes(
            request, verify, cert
        )
        host_params["host"] = str(self.address)
        if host_params["scheme"] == "https":
            pool_kwargs["server_hostname"] = self.hostname
            pool_kwargs["assert_hostname"] = self.hostname
        return host_params, pool_kwargs


def _not_connected(exc: requests.ConnectionError) -> bool:
    """The connection was never made (so nothing was sent): the next address may do."""
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    return isinstance(exc.args[0] if exc.args else None, MaxRetryError) and isinstance(
        reason, NewConnectionError | ConnectTimeoutError
    )


def post(url: str, *, data: bytes, headers: dict, timeout: float) -> requests.Response:
    """POST ``data`` to ``url``, following no redirect, connecting only to checked addresses.
    The caller closes the response (it is streamed: the body is never read here).

    Raises DestinationRefused, HostUnresolved, or the requests exception of the try."""
    with requests.Session() as session:
        prepared = session.prepare_request(
            requests.Request("POST", url, data=data, headers=headers)
        )
        parts = urlsplit(prepared.url)
        hostname = parts.hostname or ""
        # (stream=True, the third argument: the answer's body is never read)
        env = session.merge_environment_settings(prepared.url, {}, True, None, None)
        send = {"timeout": timeout, "allow_redirects": False, **env}
        try:
            addresses = checked_addresses(hostname, _port(parts))
        except HostUnresolved:
            if not select_proxy(prepared.url, env["proxies"]):
                raise
            addresses = []  # the proxy resolves names the portal's host cannot
        if select_proxy(prepared.url, env["proxies"]):
            return session.send(prepared, **send)
        prepared.headers["Host"] = parts.netloc
        last: requests.ConnectionError | None = None
        for address in addresses:
            session.mount(f"{parts.scheme}://", _PinnedAdapter(address=address, hostname=hostname))
            try:
                return session.send(prepared, **send)
            except requests.ConnectionError as exc:
                if not _not_connected(exc):
                    raise
                last = exc
        assert last is not None
        raise last
