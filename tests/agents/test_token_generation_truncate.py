"""The token counter moves when the token or machine table is emptied with ``TRUNCATE``
(migration ``agents.0010``), on PostgreSQL.

Lock-safe: a ``TRUNCATE`` of the real tables needs their ``ACCESS EXCLUSIVE`` lock, which
waits on every connection the worker's pools hold on them (session 11 saw it starve a
whole servers pass). So the real tables are only read about in the catalog, and the
migration's own trigger statement is run on a temporary table, which this test alone sees:
its ``TRUNCATE`` takes no lock anyone else holds."""

from __future__ import annotations

import importlib

import pytest
from django.db import connection

pytestmark = [pytest.mark.servers, pytest.mark.django_db]

TRUNCATE_EVENT = 1 << 5  # pg_trigger.tgtype's TRUNCATE bit (PostgreSQL's trigger.h)
migration = importlib.import_module("agents.migrations.0010_token_generation_truncate")


def counter(cursor) -> int:
    cursor.execute("SELECT value FROM agents_token_generation WHERE id = 1")
    return cursor.fetchone()[0]


def test_emptying_the_token_or_machine_table_moves_the_token_counter():
    if connection.vendor != "postgresql":
        pytest.skip("TRUNCATE is PostgreSQL's; SQLite's DELETE fires the delete triggers")
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname, t.tgname FROM pg_trigger t "
            "JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_proc p ON p.oid = t.tgfoid "
            "WHERE p.proname = 'agents_token_generation_bump' AND t.tgtype & %s <> 0",
            [TRUNCATE_EVENT],
        )
        assert set(cursor.fetchall()) == {
            ("agents_machinetoken", "agents_token_truncated"),
            ("agents_machine", "agents_machine_truncated"),
        }
        cursor.execute("CREATE TEMPORARY TABLE emptied_by_hand (id integer)")
        (token_trigger, _) = migration.POSTGRESQL
        probe = token_trigger.replace("agents_token_truncated", "emptied_probe").replace(
            "ON agents_machinetoken", "ON emptied_by_hand"
        )
        assert "agents_machinetoken" not in probe  # never the real table (and its lock)
        cursor.execute(probe)
        cursor.execute("INSERT INTO emptied_by_hand VALUES (1), (2)")
        before = counter(cursor)
        cursor.execute("TRUNCATE emptied_by_hand")
        assert counter(cursor) == before + 1
