"""The real servers the suite's second pass relies on are there and answer."""

import pytest
from django.db import connection

from agents.runtime.blobstore import base  # noqa: F401 - the runtime imports without Django setup


@pytest.mark.servers
@pytest.mark.django_db
def test_the_database_answers():
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        assert cursor.fetchone() == (1,)


@pytest.mark.servers
def test_redis_answers(redis_url):
    import redis

    assert redis.Redis.from_url(redis_url).ping() is True


@pytest.mark.servers
def test_azurite_answers(azurite):
    from azure.storage.blob import BlobServiceClient

    client = BlobServiceClient.from_connection_string(azurite)
    container = client.create_container("servers-check")
    try:
        container.upload_blob("hello", b"world")
        assert container.download_blob("hello").readall() == b"world"
    finally:
        client.delete_container("servers-check")
