"""A request that finds the database gone for a moment (a restart dropped its connection)
is answered 503 with Retry-After, which the agent waits out, never a 500 (the end-to-end
case: tests/faults/test_postgres_restart.py)."""

from __future__ import annotations

import sys

import pytest
from django.db import InterfaceError, OperationalError
from django.test import RequestFactory

from portal.concurrency import server_error


@pytest.mark.parametrize(
    "failure",
    [
        OperationalError("consuming input failed: server closed the connection unexpectedly"),
        InterfaceError("connection already closed"),
    ],
)
def test_the_database_going_away_is_busy_not_broken(failure, settings):
    request = RequestFactory().post("/api/agent/jobs/1/progress/")
    try:
        raise failure
    except type(failure):
        assert sys.exc_info()[1] is failure
        answer = server_error(request)
    assert answer.status_code == 503
    assert answer["Retry-After"] == str(settings.HAVEN_PORTAL_RETRY_AFTER)


def test_any_other_error_is_still_a_500():
    request = RequestFactory().get("/vaults/")
    try:
        raise ValueError("a bug")
    except ValueError:
        answer = server_error(request)
    assert answer.status_code == 500
