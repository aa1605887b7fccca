"""Recover Data downloads live in the portal's storage (container ``haven-downloads``), not
on the disk of the portal that received them: any portal serves them, byte for byte, a part
at a time; a cut-short or refused upload leaves nothing; expired ones are purged."""

from __future__ import annotations

import hashlib
import io
import random
import time

import pytest
from asgiref.sync import async_to_sync
from django.core.handlers.asgi import ASGIRequest
from django.test import AsyncClient
from django.urls import reverse

from jobs.models import Job
from jobs.recovery import services
from vaults import storage

pytestmark = pytest.mark.django_db


def _archive(size: int) -> bytes:
    return random.Random(13).randbytes(size)


def _stored() -> list[str]:
    with storage.downloads_store() as store:
        return [info.name for info in store.list()]


def _post(client, job, body, token_for, machine):
    return client.generic(
        "POST", reverse("recovery_api:download", args=[job.pk]), body,
        content_type="application/gzip", **token_for(machine),
    )  # fmt: skip


def test_an_archive_larger_than_a_part_is_stored_in_parts_and_served_byte_for_byte(
    client, settings, web02, download_job, token_for
):
    archive = _archive(2 * services.DOWNLOAD_PART_BYTES + 12345)
    response = _post(client, download_job, archive, token_for, web02)
    assert response.status_code == 200 and response.json()["bytes"] == len(archive)
    Job.objects.filter(pk=download_job.pk).update(status=Job.Status.COMPLETED)
    names = _stored()
    assert len([n for n in names if "/parts/" in n]) == 3
    assert f"{download_job.pk}/archive.json" in names
    assert not (settings.DATA_DIR / "recovery-downloads").exists()
    got = client.get(reverse("recovery:download_file", args=[download_job.pk]))
    assert got.status_code == 200 and got["Content-Length"] == str(len(archive))
    assert hashlib.sha256(b"".join(got.streaming_content)).digest() == (
        hashlib.sha256(archive).digest()
    )


def test_under_asgi_the_archive_is_streamed_from_an_async_iterator(alice, web02, download_job):
    archive = _archive(services.DOWNLOAD_PART_BYTES + 1)
    services.download_receive(
        machine=web02, job=download_job, stream=io.BytesIO(archive), length=len(archive)
    )
    Job.objects.filter(pk=download_job.pk).update(status=Job.Status.COMPLETED)

    async def fetch():
        client = AsyncClient()
        await client.aforce_login(alice)
        got = await client.get(reverse("recovery:download_file", args=[download_job.pk]))
        assert isinstance(got.asgi_request, ASGIRequest) and got.is_async
        return b"".join([chunk async for chunk in got.streaming_content])

    assert async_to_sync(fetch)() == archive


def test_an_archive_cut_short_is_refused_and_leaves_nothing_in_storage(web02, download_job):
    archive = _archive(services.DOWNLOAD_PART_BYTES + 10)
    with pytest.raises(services.RecoveryRefused, match="incomplete"):
        services.download_receive(
            machine=web02, job=download_job, stream=io.BytesIO(archive), length=len(archive) + 5
        )
    assert _stored() == []


def test_a_second_upload_of_the_same_download_keeps_the_first(client, web02, download_job):
    first, second = b"first archive", b"second, other bytes"
    for body in (first, second):
        services.download_receive(
            machine=web02, job=download_job, stream=io.BytesIO(body), length=len(body)
        )
    Job.objects.filter(pk=download_job.pk).update(status=Job.Status.COMPLETED)
    got = client.get(reverse("recovery:download_file", args=[download_job.pk]))
    assert b"".join(got.streaming_content) == first
    assert len(_stored()) == 2  # the manifest and the first upload's one part


def test_an_expired_download_is_purged_and_no_longer_served(client, web02, download_job):
    body = b"an archive"
    services.download_receive(
        machine=web02, job=download_job, stream=io.BytesIO(body), length=len(body)
    )
    Job.objects.filter(pk=download_job.pk).update(status=Job.Status.COMPLETED)
    url = reverse("recovery:download_file", args=[download_job.pk])
    assert client.get(url).status_code == 200
    assert services.downloads_purge() == 0
    assert services.downloads_purge(now=time.time() + services.DOWNLOAD_TTL + 60) == 1
    assert _stored() == []
    assert client.get(url).status_code == 404


def test_an_archive_the_storage_cannot_take_is_answered_503_so_the_agent_may_retry(
    client, settings, tmp_path, web02, download_job, token_for
):
    settings.AZURE_STORAGE_CONNECTION_STRING = None  # a local directory that breaks
    storage.downloads_store()  # the container exists; then the storage goes away
    (tmp_path / "storage").rename(tmp_path / "storage-gone")
    (tmp_path / "storage").write_text("not a directory any more")
    response = _post(client, download_job, b"an archive", token_for, web02)
    assert response.status_code == 503
    assert "could not store the archive" in response.json()["message"]
