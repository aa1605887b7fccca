"""Grants for the local-directory backend: what an agent can and cannot do through the
portal's storage endpoint, and that expiry and revocation take effect at once."""

from __future__ import annotations

import logging
import socket
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import pytest
import requests
from django.test import Client

from agents.runtime.blobstore import (
    BlobExists,
    BlobForbidden,
    BlobNotFound,
    GrantExpired,
    open_grant,
)
from agents.runtime.blobstore.http import HttpGrantStore
from vaults.storage import primary_account, secondary_account
from vaults.storage import tokens as grant_tokens

pytestmark = pytest.mark.urls("tests.vaults.storage.urls")


def in_an_hour() -> datetime:
    return datetime.now(UTC) + timedelta(hours=1)


def auth(grant: dict) -> dict:
    return {"Authorization": f"HavenGrant {grant['token']}"}


def test_the_grant_has_the_documented_shape(local_storage, local_container):
    expires_at = in_an_hour()
    grant = primary_account().issue_grant(local_container, expires_at=expires_at)
    assert grant["kind"] == "haven-http"
    assert grant["container"] == local_container
    assert grant["base_url"] == f"http://testserver/storage/{local_container}/"
    assert grant["permissions"] == "rcl"
    assert datetime.fromisoformat(grant["expires_at"]) == expires_at.replace(microsecond=0)
    assert grant["token"] not in grant["base_url"]


def test_an_agent_grant_uploads_and_reads_but_is_forbidden_to_delete(served, local_container):
    grant = primary_account().issue_grant(local_container, expires_at=in_an_hour())
    with open_grant(grant) as store:
        store.put("packs/aa/aa01", b"pack bytes, again")
        with pytest.raises(BlobExists):
            store.put("packs/aa/aa01", b"pack bytes")  # create only, never overwrite
        assert store.get("packs/aa/aa01") == b"pack bytes, again"
        assert [i.name for i in store.list()] == ["packs/aa/aa01"]
        with pytest.raises(BlobForbidden, match="does not allow delete"):
            store.delete("packs/aa/aa01")

    raw = requests.delete(f"{grant['base_url']}packs/aa/aa01", headers=auth(grant), timeout=10)
    assert raw.status_code == 403
    assert raw.json()["error"] == "forbidden"
    # Still there: the portal's own full-rights store sees it.
    assert primary_account().store(local_container).get("packs/aa/aa01") == b"pack bytes, again"


def test_an_expired_grant_is_refused(served, local_container, monkeypatch):
    grant = primary_account().issue_grant(local_container, expires_at=in_an_hour())
    later = datetime.now(UTC) + timedelta(hours=2)
    monkeypatch.setattr(grant_tokens, "now", lambda: later.timestamp())

    raw = requests.get(f"{grant['base_url']}anything", headers=auth(grant), timeout=10)
    assert raw.status_code == 403
    assert raw.json()["error"] == "grant expired"

    store = HttpGrantStore(grant["base_url"], grant["token"])
    with pytest.raises(GrantExpired, match="expired at"):
        store.put("packs/x", b"x")


def test_an_already_expired_grant_is_refused_before_any_request(local_storage, local_container):
    grant = primary_account().issue_grant(
        local_container, expires_at=datetime.now(UTC) - timedelta(minutes=1)
    )
    with pytest.raises(GrantExpired, match="ask the portal for a new one"):
        open_grant(grant)


def test_revoking_refuses_every_outstanding_grant_at_once(served, local_container):
    account = primary_account()
    first = open_grant(account.issue_grant(local_container, expires_at=in_an_hour()))
    second = open_grant(account.issue_grant(local_container, expires_at=in_an_hour()))
    first.put("keys/1", b"k")

    account.revoke_grants(local_container)

    for store in (first, second):
        with pytest.raises(BlobForbidden, match="revoked"):
            store.get("keys/1")
        with pytest.raises(BlobForbidden, match="revoked"):
            store.put("keys/2", b"k")
    fresh = open_grant(account.issue_grant(local_container, expires_at=in_an_hour()))
    assert fresh.get("keys/1") == b"k"


def test_a_grant_outlives_neither_delete_nor_recreation_of_its_container(served, local_container):
    account = primary_account()
    store = open_grant(account.issue_grant(local_container, expires_at=in_an_hour()))
    store.put("a", b"1")
    account.delete_container(local_container)
    account.create_container(local_container)
    with pytest.raises(BlobForbidden, match="revoked"):
        store.exists("a")


def test_a_grant_works_only_for_its_own_container(local_storage, local_container):
    account = primary_account()
    account.create_container("other-vault")
    grant = account.issue_grant(local_container, expires_at=in_an_hour())
    response = Client().get("/storage/other-vault/x", headers=auth(grant))
    assert response.status_code == 403
    assert response.json() == {
        "error": "forbidden",
        "message": "this storage grant is for another container",
    }


def test_a_request_without_a_grant_is_told_how_to_send_one(local_storage, local_container):
    response = Client().get(f"/storage/{local_container}/x")
    assert response.status_code == 401
    assert "Authorization: HavenGrant" in response.json()["message"]
    assert response["WWW-Authenticate"] == "HavenGrant"


def test_a_tampered_token_is_refused(local_storage, local_container):
    grant = primary_account().issue_grant(local_container, expires_at=in_an_hour())
    payload, _, signature = grant["token"].rpartition(":")
    forged = f"{payload}:{'A' * len(signature)}"
    response = Client().get(
        f"/storage/{local_container}/x", headers={"Authorization": f"HavenGrant {forged}"}
    )
    assert response.status_code == 403
    assert "not valid" in response.json()["message"]


def test_puts_need_no_csrf_token(local_storage, local_container):
    grant = primary_account().issue_grant(local_container, expires_at=in_an_hour())
    client = Client(enforce_csrf_checks=True)
    response = client.put(
        f"/storage/{local_container}/packs/p1",
        data=b"bytes",
        content_type="application/octet-stream",
        headers=auth(grant),
    )
    assert response.status_code == 201
    assert response.json() == {"name": "packs/p1", "size": 5}


def test_a_create_only_grant_cannot_overwrite(local_storage, local_container):
    grant = primary_account().issue_grant(
        local_container, expires_at=in_an_hour(), permissions="rc"
    )
    client = Client()
    url = f"/storage/{local_container}/snapshots/1"
    kwargs = {"content_type": "application/octet-stream", "headers": auth(grant)}
    assert client.put(url, data=b"v1", **kwargs).status_code == 201
    refused = client.put(url, data=b"v2", **kwargs)
    assert refused.status_code == 409
    assert refused.json()["error"] == "blob exists"
    assert "never overwritten" in refused.json()["message"]
    assert client.put(url, data=b"v1", **kwargs).status_code == 201  # a retried create
    assert client.get(f"/storage/{local_container}/", headers=auth(grant)).status_code == 403


def test_ranges_are_served_as_partial_content(local_storage, local_container):
    primary_account().store(local_container).put("packs/p", b"0123456789")
    grant = primary_account().issue_grant(local_container, expires_at=in_an_hour())
    client = Client()
    url = f"/storage/{local_container}/packs/p"

    def get(range_header):
        return client.get(url, headers={**auth(grant), "Range": range_header})

    response = get("bytes=2-5")
    assert response.status_code == 206
    assert b"".join(response.streaming_content) == b"2345"
    assert response["Content-Range"] == "bytes 2-5/10"
    response = get("bytes=-3")
    assert b"".join(response.streaming_content) == b"789"
    response = get("bytes=10-20")
    assert response.status_code == 416
    assert response["Content-Range"] == "bytes */10"
    head = client.head(url, headers=auth(grant))
    assert head.status_code == 200 and head["Content-Length"] == "10"


def test_a_truncated_upload_stores_nothing(served, local_container):
    grant = primary_account().issue_grant(local_container, expires_at=in_an_hour())
    parts = urlsplit(grant["base_url"])
    # An agent that dies mid-upload: announces 100 bytes, sends 9, closes its side.
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(
            (
                f"PUT {parts.path}packs/short HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                f"Authorization: HavenGrant {grant['token']}\r\nContent-Length: 100\r\n"
                "Connection: close\r\n\r\n"
            ).encode()
            + b"only nine"
        )
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400")
    assert b"incomplete upload" in answer
    with pytest.raises(BlobNotFound):
        primary_account().store(local_container).get("packs/short")
    assert list((primary_account().directory(local_container) / ".haven" / "tmp").iterdir()) == []


def test_the_token_never_reaches_the_logs(served, local_container, caplog):
    grant = primary_account().issue_grant(local_container, expires_at=in_an_hour())
    store = open_grant(grant)
    caplog.set_level(logging.DEBUG)
    store.put("a", b"1")
    with pytest.raises(BlobForbidden):
        store.delete("a")
    with pytest.raises(BlobNotFound):
        store.get("missing")
    assert grant["token"] not in caplog.text
    assert grant["token"] not in repr(store)


def test_a_secondary_grant_reaches_the_secondary_directory(served, container_name, settings):
    account = secondary_account()
    account.create_container(container_name)
    with open_grant(account.issue_grant(container_name, expires_at=in_an_hour())) as store:
        store.put("replica", b"r")
    assert (settings.SECONDARY_STORAGE_DIR / container_name / "replica").read_bytes() == b"r"
    assert not primary_account().container_exists(container_name)
