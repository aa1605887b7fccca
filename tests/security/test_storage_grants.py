"""A compromised machine holds its storage grant and uses its own HTTP client, not the
agent's: what the grant lets it do is what the storage server allows, on every backend.

The grant a machine gets is create + read + list: it may add blobs, never replace or
delete one, and never touch another container. Each attack is sent raw (requests), so
nothing in the agent's own client (If-None-Match, BlobExists) helps the defence.
"""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import requests

from vaults.storage import primary_account

SNAPSHOT = "snapshots/" + "ab" * 16
ORIGINAL = b"the sealed manifest of a recovery point"
EVIL = b"\0" * len(ORIGINAL)  # what the attack wrote: zeros over the snapshot


def in_an_hour() -> datetime:
    return datetime.now(UTC) + timedelta(hours=1)


class LocalAttacker:
    """Raw requests to the portal's storage endpoint with the machine's grant token."""

    def __init__(self, grant: dict):
        self.base = grant["base_url"]
        self.headers = {"Authorization": f"HavenGrant {grant['token']}"}

    def url(self, name: str, container: str | None = None) -> str:
        if container is None:
            return self.base + name
        return self.base.rstrip("/").rsplit("/", 1)[0] + f"/{container}/{name}"

    def put(self, name: str, data: bytes, container: str | None = None) -> int:
        return requests.put(
            self.url(name, container), data=data, headers=self.headers, timeout=10
        ).status_code

    def put_staged(self, name: str, data: bytes) -> int:
        return self.put(name, data)  # the local endpoint has one way to write

    def get(self, name: str, container: str | None = None) -> requests.Response:
        return requests.get(self.url(name, container), headers=self.headers, timeout=10)

    def list(self) -> requests.Response:
        return requests.get(self.base, headers=self.headers, timeout=10)

    def delete(self, name: str) -> int:
        return requests.delete(self.url(name), headers=self.headers, timeout=10).status_code


class AzureAttacker:
    """Raw Blob REST calls to Azure (Azurite) with the machine's SAS."""

    HEADERS = {"x-ms-version": "2021-08-06"}

    def __init__(self, grant: dict):
        self.container_url = grant["container_url"]
        self.sas = grant["sas"]

    def url(self, name: str, container: str | None = None, query: str = "") -> str:
        base = self.container_url
        if container is not None:
            base = base.rsplit("/", 1)[0] + f"/{container}"
        return f"{base}/{name}?{query}{self.sas}"

    def put(self, name: str, data: bytes, container: str | None = None) -> int:
        headers = {**self.HEADERS, "x-ms-blob-type": "BlockBlob"}
        return requests.put(
            self.url(name, container), data=data, headers=headers, timeout=10
        ).status_code

    def put_staged(self, name: str, data: bytes) -> int:
        """Put Block then Put Block List: the other way to write a block blob."""
        block = base64.b64encode(b"block-0001").decode()
        staged = requests.put(
            self.url(name, query=f"comp=block&blockid={requests.utils.quote(block)}&"),
            data=data,
            headers=self.HEADERS,
            timeout=10,
        )
        if staged.status_code >= 300:
            return staged.status_code
        body = (
            f'<?xml version="1.0" encoding="utf-8"?><BlockList><Latest>{block}</Latest></BlockList>'
        )
        return requests.put(
            self.url(name, query="comp=blocklist&"), data=body, headers=self.HEADERS, timeout=10
        ).status_code

    def get(self, name: str, container: str | None = None) -> requests.Response:
        return requests.get(self.url(name, container), headers=self.HEADERS, timeout=10)

    def list(self) -> requests.Response:
        return requests.get(
            f"{self.container_url}?restype=container&comp=list&{self.sas}",
            headers=self.HEADERS,
            timeout=10,
        )

    def delete(self, name: str) -> int:
        return requests.delete(self.url(name), headers=self.HEADERS, timeout=10).status_code


@pytest.fixture(params=["local", "azurite"])
def storage(request, settings, tmp_path):
    """The portal's storage on one backend; yields the backend's name."""
    if request.param == "local":
        settings.AZURE_STORAGE_CONNECTION_STRING = None
        settings.SECONDARY_STORAGE_CONNECTION_STRING = None
        settings.STORAGE_DIR = tmp_path / "storage"
        settings.SECONDARY_STORAGE_DIR = tmp_path / "storage-secondary"
        live_server = request.getfixturevalue("live_server")
        settings.HAVEN_PUBLIC_URL = live_server.url
    else:
        settings.AZURE_STORAGE_CONNECTION_STRING = request.getfixturevalue("azurite")
    return request.param


@pytest.fixture
def containers(storage):
    account = primary_account()
    names = [f"machine-{uuid.uuid4().hex}" for _ in range(2)]
    for name in names:
        account.create_container(name)
    yield names
    for name in names:
        account.delete_container(name)


@pytest.fixture
def attacker(storage, containers):
    """The machine's grant for the first container, in an attacker's hands, after a
    backup stored a snapshot and the repository config there."""
    own = primary_account().store(containers[0])
    own.put(SNAPSHOT, ORIGINAL)
    own.put("config", b'{"format": "haven-repository"}')
    grant = primary_account().issue_grant(containers[0], expires_at=in_an_hour())
    assert grant["permissions"] == "rcl"
    return LocalAttacker(grant) if storage == "local" else AzureAttacker(grant)


def stored(container: str, name: str) -> bytes:
    return primary_account().store(container).get(name)


def test_a_machine_cannot_overwrite_its_own_snapshot(attacker, containers):
    status = attacker.put(SNAPSHOT, EVIL)
    assert status in (403, 409)
    assert stored(containers[0], SNAPSHOT) == ORIGINAL


def test_a_machine_cannot_overwrite_the_repository_config(attacker, containers):
    assert attacker.put("config", b"") in (403, 409)
    assert stored(containers[0], "config") == b'{"format": "haven-repository"}'


def test_a_machine_cannot_overwrite_a_snapshot_with_staged_blocks(attacker, containers):
    assert attacker.put_staged(SNAPSHOT, EVIL) in (403, 409)
    assert stored(containers[0], SNAPSHOT) == ORIGINAL


def test_a_machine_cannot_delete_a_snapshot(attacker, containers):
    assert attacker.delete(SNAPSHOT) == 403
    assert stored(containers[0], SNAPSHOT) == ORIGINAL


def test_a_machine_cannot_write_or_read_another_machines_container(attacker, containers):
    other = containers[1]
    primary_account().store(other).put(SNAPSHOT, ORIGINAL)
    assert attacker.put("snapshots/new", b"x", container=other) == 403
    assert attacker.get(SNAPSHOT, container=other).status_code == 403
    assert not primary_account().store(other).exists("snapshots/new")


def test_the_grant_still_creates_reads_and_lists(attacker, containers):
    """The other half of the matrix: what a backup needs keeps working."""
    assert attacker.put("data/ab/" + "ab" * 16, b"a new pack") == 201
    assert stored(containers[0], "data/ab/" + "ab" * 16) == b"a new pack"
    read = attacker.get(SNAPSHOT)
    assert (read.status_code, read.content) == (200, ORIGINAL)
    listed = attacker.list()
    assert listed.status_code == 200
    assert SNAPSHOT in listed.text


def test_a_new_pack_cannot_be_created_by_staged_blocks_either(attacker, storage):
    """Why the agent sends each blob in one request: on Azurite, staged blocks need w."""
    status = attacker.put_staged("data/cd/" + "cd" * 16, b"a new pack")
    assert status == (201 if storage == "local" else 403)
