"""Server-side request forgery through an alert webhook: a Contributor points a vault's webhook
at the portal's own host, the LAN or the cloud metadata service, and the portal's worker
POSTs there. The portal refuses such destinations when the webhook is saved and again at
every send (jobs.services.egress), with the system's real resolver; an admin's
HAVEN_WEBHOOK_ALLOWED_NETWORKS opens networks on purpose, and then a real receiver on
127.0.0.1 gets the POST, at the very address that was checked."""

from __future__ import annotations

import ipaddress
import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from django.utils import timezone

from jobs import services
from jobs.models import Alert, Webhook, WebhookDelivery
from jobs.services import egress, webhooks
from tests.support.webhook_receiver import Receiver, running_receiver

pytestmark = pytest.mark.django_db

ALLOW = "allow its network with HAVEN_WEBHOOK_ALLOWED_NETWORKS."


@pytest.fixture(autouse=True)
def _nothing_allowed(settings):
    """The default of a portal run with no setting: no network allowed."""
    settings.HAVEN_WEBHOOK_ALLOWED_NETWORKS = ()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver() as found:
        yield found


def _allow(settings, *networks: str) -> None:
    settings.HAVEN_WEBHOOK_ALLOWED_NETWORKS = tuple(ipaddress.ip_network(n) for n in networks)


def _alert(vault) -> Alert:
    return services.alert_raise(
        vault=vault,
        machine=None,
        kind=Alert.Kind.BACKUP_FAILED,
        severity=Alert.Severity.CRITICAL,
        message="Backup failed: disk full",
    )


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("http://localhost:8080/hook", "localhost resolves to 127.0.0.1, a loopback address"),
        ("http://127.0.0.1:6379/", "127.0.0.1 is a loopback address"),
        ("http://127.1/", "127.1 resolves to 127.0.0.1, a loopback address"),
        ("http://[::1]/", "::1 is a loopback address"),
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a link-local address"),
        ("http://[fd00:ec2::254]/latest/", "fd00:ec2::254 is a private address"),
        ("http://[fe80::1]/", "fe80::1 is a link-local address"),
        ("http://0.0.0.0:8000/", "0.0.0.0 is the unspecified address"),
        ("http://[::]/", ":: is the unspecified address"),
        ("http://[::ffff:127.0.0.1]/", "::ffff:127.0.0.1 resolves to 127.0.0.1, a loopback"),
        ("http://[::ffff:7f00:1]/", "::ffff:7f00:1 resolves to 127.0.0.1, a loopback"),
        ("http://2130706433/", "2130706433 resolves to 127.0.0.1, a loopback address"),
        ("http://0177.0.0.1/", "0177.0.0.1 resolves to 127.0.0.1, a loopback address"),
        ("http://0x7f.0.0.1/", "0x7f.0.0.1 resolves to 127.0.0.1, a loopback address"),
        ("http://10.1.2.3/", "10.1.2.3 is a private address"),
        ("https://192.168.1.10/", "192.168.1.10 is a private address"),
        ("http://172.16.0.1/", "172.16.0.1 is a private address"),
        ("http://100.64.0.1/", "100.64.0.1 is a shared address (carrier-grade NAT)"),
        ("http://224.0.0.1/", "224.0.0.1 is a multicast address"),
        ("http://[ff02::1]/", "ff02::1 is a multicast address"),
        ("http://240.0.0.1/", "240.0.0.1 is a reserved address"),
        ("http://[2002:7f00:1::]/", "2002:7f00:1:: leads to 127.0.0.1, a loopback"),
        ("http://[64:ff9b::a9fe:a9fe]/", "64:ff9b::a9fe:a9fe leads to 169.254.169.254, a link"),
    ],
)
def test_a_webhook_to_a_non_public_address_is_refused_when_saved(url, said):
    with pytest.raises(webhooks.WebhookInvalid) as caught:
        webhooks.webhook_validate(name="ops", url=url, format="generic", secret="")
    message = caught.value.message_dict["url"][0]
    assert message.startswith(said), message
    assert message.endswith(ALLOW)


def test_the_form_says_which_host_and_address_it_refused(client, alice, vault):
    client.force_login(alice)
    response = client.post(
        f"/backup-center/vaults/{vault.pk}/webhooks/",
        {"name": "meta", "url": "http://169.254.169.254/latest/meta-data/", "format": "generic"},
    )
    assert response.status_code == 400
    page = response.content.decode()
    assert "169.254.169.254 is a link-local address" in page
    assert "HAVEN_WEBHOOK_ALLOWED_NETWORKS" in page
    assert not Webhook.objects.exists()


def test_public_addresses_and_names_that_do_not_resolve_yet_are_accepted(alice, vault):
    for url in (
        "https://93.184.215.14/hook",
        "https://[2606:4700:4700::1111]/hook",
        "https://hooks.example.test/services/T0/B0/x",  # checked again at every send
    ):
        webhooks.webhook_validate(name="ops", url=url, format="slack", secret="")


def test_an_allowed_network_is_posted_to_end_to_end(settings, alice, vault, receiver):
    port = receiver.server.server_port
    with pytest.raises(webhooks.WebhookInvalid):
        webhooks.webhook_add(
            vault=vault,
            user=alice,
            name="lan",
            url=f"http://localhost:{port}/hook",
            format="generic",
        )
    _allow(settings, "127.0.0.0/8")
    hook = webhooks.webhook_add(
        vault=vault, user=alice, name="lan", url=f"http://localhost:{port}/hook", format="generic"
    )
    _alert(vault)
    assert webhooks.webhooks_send_due(now=timezone.now())["sent"] == 1
    (got,) = receiver.got
    assert got["path"] == "/hook"
    assert got["headers"]["Host"] == f"localhost:{port}"  # the name, not the address
    assert json.loads(got["body"])["event"] == "alert.raised"
    assert WebhookDelivery.objects.get(webhook=hook).outcome == "Delivered"


def test_a_refused_destination_at_send_time_fails_at_once_in_words(
    settings, client, alice, vault, receiver
):
    """A webhook saved while its network was allowed (or whose name resolved elsewhere then)
    is checked again at the send: refused, not retried, and the page says what to do."""
    _allow(settings, "127.0.0.0/8")
    hook = webhooks.webhook_add(
        vault=vault, user=alice, name="lan", url=receiver.url, format="generic"
    )
    _allow(settings, "10.0.0.0/8")
    _alert(vault)
    now = timezone.now()
    assert webhooks.webhooks_send_due(now=now)["failed"] == 1
    row = WebhookDelivery.objects.get(webhook=hook)
    assert row.last_error == f"127.0.0.1 is a loopback address (the portal's own host); {ALLOW}"
    assert (row.attempts, row.outcome, row.status_code) == (1, "Failed", None)
    assert webhooks.webhooks_send_due(now=now + timedelta(hours=1))["failed"] == 0
    assert receiver.got == []

    client.force_login(alice)
    page = client.post(f"/backup-center/webhooks/{hook.pk}/test/", follow=True)
    text = page.content.decode()
    assert "127.0.0.1 is a loopback address" in text and "HAVEN_WEBHOOK_ALLOWED_NETWORKS" in text
    assert "tries again" not in text
    assert receiver.got == []


def test_a_name_that_rebinds_after_the_check_still_reaches_only_the_checked_address(
    settings, monkeypatch, alice, vault, receiver
):
    """DNS rebinding: the name answers an allowed address to the check and another one to
    any later lookup. The portal connects to the address it checked; had it looked the name
    up again it would have gone to 127.0.0.2, where nothing listens and which is not
    allowed."""
    _allow(settings, "127.0.0.1/32")
    real = socket.getaddrinfo
    lookups: list[str] = []

    def rebinding(host, port, *args, **kwargs):
        if host != "rebind.test":
            return real(host, port, *args, **kwargs)
        lookups.append(host)
        address = "127.0.0.1" if len(lookups) % 2 else "127.0.0.2"
        return real(address, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    port = receiver.server.server_port
    hook = Webhook.objects.create(
        vault=vault, created_by=alice, name="rb", url=f"http://rebind.test:{port}/hook"
    )
    _alert(vault)
    assert webhooks.webhooks_send_due(now=timezone.now())["sent"] == 1
    assert lookups == ["rebind.test"]  # one lookup: the one that was checked
    (got,) = receiver.got
    assert got["headers"]["Host"] == f"rebind.test:{port}"
    assert WebhookDelivery.objects.get(webhook=hook).outcome == "Delivered"

    # The other way round: the lookup at send answers the forbidden address.
    second = services.alert_raise(
        vault=vault,
        machine=None,
        kind=Alert.Kind.NO_RECENT_BACKUP,
        severity=Alert.Severity.WARNING,
        message="No backup in 3 days",
    )
    assert webhooks.webhooks_send_due(now=timezone.now())["failed"] == 1
    row = WebhookDelivery.objects.get(alert=second)
    assert row.last_error.startswith("rebind.test resolves to 127.0.0.2, a loopback address")
    assert len(receiver.got) == 1


def test_the_address_rules_cover_v4_mapped_and_embedded_addresses():
    problem = egress.address_problem
    ip = ipaddress.ip_address
    assert problem(ip("8.8.8.8"), ()) == ""
    assert problem(ip("2606:4700:4700::1111"), ()) == ""
    assert problem(ip("::ffff:10.0.0.1"), ()) == "10.0.0.1 is a private address"
    assert problem(ip("::ffff:10.0.0.1"), [ipaddress.ip_network("10.0.0.0/8")]) == ""
    assert "leads to 10.0.0.1" in problem(ip("2002:a00:1::1"), ())
    assert problem(ip("192.168.5.5"), [ipaddress.ip_network("192.168.0.0/16")]) == ""


def _tls_files(tmp_path, name: str):
    """A CA and a certificate for ``name`` it signed (EC keys: milliseconds)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def made(subject, issuer, key, signer, *, ca: bool, san=None):
        now = timezone.now()
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(hours=1))
            .not_valid_after(now + timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if san:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(san)]), critical=False
            )
        return builder.sign(signer, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = made("Haven test CA", "Haven test CA", ca_key, ca_key, ca=True)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = made(name, "Haven test CA", key, ca_key, ca=False, san=name)
    pem = serialization.Encoding.PEM
    (tmp_path / "ca.pem").write_bytes(ca.public_bytes(pem))
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(pem))
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem"


def test_https_to_the_checked_address_keeps_the_name_for_sni_and_the_certificate(
    settings, monkeypatch, tmp_path, receiver
):
    """Connecting to the address, not the name, must not weaken TLS: the server is asked for
    the name (SNI) and its certificate must be for the name."""
    import ssl

    _allow(settings, "127.0.0.0/8")
    ca, cert, key = _tls_files(tmp_path, "localhost")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    asked: list[str | None] = []
    context.sni_callback = lambda sock, name, ctx: asked.append(name)
    server = receiver.server
    server.socket = context.wrap_socket(server.socket, server_side=True)
    port = server.server_port
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ca))
    with egress.post(f"https://localhost:{port}/hook", data=b"{}", headers={}, timeout=5) as answer:
        assert answer.status_code == 200
    assert asked == ["localhost"]
    assert receiver.got[0]["headers"]["Host"] == f"localhost:{port}"

    # The same server under another name: the certificate does not match, nothing is sent.
    import requests

    with pytest.raises(requests.exceptions.SSLError):
        egress.post(f"https://127.0.0.1:{port}/hook", data=b"{}", headers={}, timeout=5)
    assert len(receiver.got) == 1


def test_an_allowed_ipv6_network_is_posted_to_and_v4_mapped_loopback_is_not(settings):
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    got: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            got.append(self.headers["Host"])
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    class Server6(ThreadingHTTPServer):
        address_family = socket.AF_INET6

    try:
        server = Server6(("::1", 0), Handler)
    except OSError:
        pytest.skip("no IPv6 loopback here")
    import threading

    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        url = f"http://[::1]:{server.server_port}/hook"
        with pytest.raises(egress.DestinationRefused):
            egress.post(url, data=b"{}", headers={}, timeout=5)
        _allow(settings, "::1/128")
        with egress.post(url, data=b"{}", headers={}, timeout=5) as answer:
            assert answer.status_code == 204
        assert got == [f"[::1]:{server.server_port}"]
        # ::1 allowed does not open 127.0.0.1 written as an IPv6 address.
        with pytest.raises(
            egress.DestinationRefused, match=r"resolves to 127\.0\.0\.1, a loopback"
        ):
            egress.post(
                f"http://[::ffff:127.0.0.1]:{server.server_port}/", data=b"", headers={}, timeout=5
            )
    finally:
        server.shutdown()
        server.server_close()


def test_through_a_proxy_the_proxy_connects_and_literal_private_hosts_are_still_refused(
    monkeypatch, receiver
):
    """HTTP_PROXY set: a name the portal cannot resolve goes to the proxy (here the receiver
    stands in for it and gets the absolute URL); a private literal never leaves."""
    for name in ("NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{receiver.server.server_port}")
    with egress.post(
        "http://hooks.example.test/services/x", data=b"{}", headers={}, timeout=5
    ) as answer:
        assert answer.status_code == 200
    assert receiver.got[0]["path"] == "http://hooks.example.test/services/x"
    with pytest.raises(egress.DestinationRefused, match=r"10\.1\.2\.3 is a private address"):
        egress.post("http://10.1.2.3/hook", data=b"{}", headers={}, timeout=5)
    assert len(receiver.got) == 1


def test_a_receiver_that_never_ends_its_answer_holds_the_sender_no_longer_than_its_status(
    settings,
):
    """A receiver of the Contributor's own answers 200 and then drips a body that never
    ends (a byte every 0.2 s, each within the read timeout): the sender takes the status
    and closes, never reading the body into the worker's memory or time."""
    import threading
    import time

    _allow(settings, "127.0.0.0/8")
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    stop = threading.Event()

    def drip() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\n\r\n")
            deadline = time.monotonic() + 30
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    conn.sendall(b"x")
                except OSError:  # the sender closed: what it should do
                    return
                time.sleep(0.2)

    thread = threading.Thread(target=drip, daemon=True)
    thread.start()
    started = time.monotonic()
    try:
        with egress.post(
            f"http://127.0.0.1:{port}/hook", data=b"{}", headers={}, timeout=2
        ) as response:
            status = response.status_code
        assert status == 200
        assert time.monotonic() - started < 5
    finally:
        stop.set()
        server.close()
        thread.join(5)


@pytest.fixture
def hanging_resolver(settings, monkeypatch) -> Iterator[str]:
    """A resolver that never answers for one name (until the test ends), with the lookup
    bound at half a second: the system's real resolver for every other name."""
    settings.HAVEN_WEBHOOK_RESOLVE_SECONDS = 0.5
    real = socket.getaddrinfo
    release = threading.Event()

    def hanging(host, port, *args, **kwargs):
        if host != "slow-dns.example.test":
            return real(host, port, *args, **kwargs)
        release.wait(10)
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", hanging)
    try:
        yield "slow-dns.example.test"
    finally:
        release.set()


def test_a_resolver_that_hangs_holds_the_webhook_form_no_longer_than_the_bound(
    client, alice, vault, hanging_resolver
):
    client.force_login(alice)
    started = time.monotonic()
    response = client.post(
        f"/backup-center/vaults/{vault.pk}/webhooks/",
        {"name": "slow", "url": f"https://{hanging_resolver}/hook", "format": "generic"},
    )
    took = time.monotonic() - started
    assert response.status_code == 400
    assert f"Could not resolve {hanging_resolver} in time" in response.content.decode()
    assert 0.5 <= took < 2.5, took
    assert not Webhook.objects.exists()
    # A name that is merely unknown is still accepted at once (every send checks it).
    webhooks.webhook_validate(
        name="ops", url="https://hooks.example.test/x", format="generic", secret=""
    )


def test_a_resolver_that_hangs_at_send_fails_the_try_in_words_within_the_bound(
    alice, vault, hanging_resolver
):
    hook = Webhook.objects.create(
        vault=vault, created_by=alice, name="slow", url=f"https://{hanging_resolver}/hook"
    )
    _alert(vault)
    started = time.monotonic()
    assert webhooks.webhooks_send_due(now=timezone.now())["failed"] == 1
    assert time.monotonic() - started < 2.5
    row = WebhookDelivery.objects.get(webhook=hook)
    assert row.last_error.startswith(f"Could not resolve {hanging_resolver} in time")
    assert row.outcome != "Delivered"


def test_lookups_that_hang_hold_at_most_four_threads_and_later_ones_time_out_too(
    hanging_resolver,
):
    def lookup(_):
        started = time.monotonic()
        with pytest.raises(egress.ResolveTimedOut):
            egress.resolve(hanging_resolver, 443)
        return time.monotonic() - started

    with ThreadPoolExecutor(6) as callers:
        waited = list(callers.map(lookup, range(6)))
    assert all(w < 2.0 for w in waited), waited
    hung = [t for t in threading.enumerate() if t.name == "haven-resolve"]
    assert len(hung) == 4 and all(t.daemon for t in hung)
