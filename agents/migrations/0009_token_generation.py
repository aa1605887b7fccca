"""A counter the database bumps whenever a machine token may have stopped being live: a
token revoked, changed or deleted, a machine unregistered, moved to another vault or
deleted. Every portal process keeps verified tokens in memory (``agents.live_auth``) and
trusts them only while this counter is what it was when they were read, so a change made
anywhere (another process, the admin, SQL by hand) is seen by all within a bound.

Triggers rather than the services: no path that changes a token's standing can forget it.
A plain table of one row, not a model (a test database's flush leaves it as it is)."""

from django.db import migrations

TABLE = "agents_token_generation"

POSTGRESQL = [
    f"CREATE TABLE {TABLE} (id integer PRIMARY KEY, value bigint NOT NULL)",
    f"INSERT INTO {TABLE} (id, value) VALUES (1, 0)",
    "CREATE FUNCTION agents_token_generation_bump() RETURNS trigger LANGUAGE plpgsql AS "
    f"$$ BEGIN UPDATE {TABLE} SET value = value + 1 WHERE id = 1; RETURN NULL; END $$",
    "CREATE TRIGGER agents_token_standing AFTER UPDATE OF revoked_at, token_hash, machine_id "
    "ON agents_machinetoken FOR EACH ROW WHEN (OLD.revoked_at IS DISTINCT FROM NEW.revoked_at "
    "OR OLD.token_hash IS DISTINCT FROM NEW.token_hash "
    "OR OLD.machine_id IS DISTINCT FROM NEW.machine_id) "
    "EXECUTE FUNCTION agents_token_generation_bump()",
    "CREATE TRIGGER agents_token_deleted AFTER DELETE ON agents_machinetoken "
    "FOR EACH STATEMENT EXECUTE FUNCTION agents_token_generation_bump()",
    "CREATE TRIGGER agents_machine_standing AFTER UPDATE OF unregistered_at, vault_id "
    "ON agents_machine FOR EACH ROW WHEN (OLD.unregistered_at IS DISTINCT FROM "
    "NEW.unregistered_at OR OLD.vault_id IS DISTINCT FROM NEW.vault_id) "
    "EXECUTE FUNCTION agents_token_generation_bump()",
    "CREATE TRIGGER agents_machine_deleted AFTER DELETE ON agents_machine "
    "FOR EACH STATEMENT EXECUTE FUNCTION agents_token_generation_bump()",
]
POSTGRESQL_UNDO = [
    "DROP TRIGGER agents_token_standing ON agents_machinetoken",
    "DROP TRIGGER agents_token_deleted ON agents_machinetoken",
    "DROP TRIGGER agents_machine_standing ON agents_machine",
    "DROP TRIGGER agents_machine_deleted ON agents_machine",
    "DROP FUNCTION agents_token_generation_bump()",
    f"DROP TABLE {TABLE}",
]

_BUMP = f"BEGIN UPDATE {TABLE} SET value = value + 1 WHERE id = 1; END"
SQLITE = [
    f"CREATE TABLE {TABLE} (id integer PRIMARY KEY, value bigint NOT NULL)",
    f"INSERT INTO {TABLE} (id, value) VALUES (1, 0)",
    "CREATE TRIGGER agents_token_standing AFTER UPDATE OF revoked_at, token_hash, machine_id "
    "ON agents_machinetoken FOR EACH ROW WHEN OLD.revoked_at IS NOT NEW.revoked_at "
    "OR OLD.token_hash IS NOT NEW.token_hash OR OLD.machine_id IS NOT NEW.machine_id " + _BUMP,
    "CREATE TRIGGER agents_token_deleted AFTER DELETE ON agents_machinetoken " + _BUMP,
    "CREATE TRIGGER agents_machine_standing AFTER UPDATE OF unregistered_at, vault_id "
    "ON agents_machine FOR EACH ROW WHEN OLD.unregistered_at IS NOT NEW.unregistered_at "
    "OR OLD.vault_id IS NOT NEW.vault_id " + _BUMP,
    "CREATE TRIGGER agents_machine_deleted AFTER DELETE ON agents_machine " + _BUMP,
]
SQLITE_UNDO = [
    "DROP TRIGGER agents_token_standing",
    "DROP TRIGGER agents_token_deleted",
    "DROP TRIGGER agents_machine_standing",
    "DROP TRIGGER agents_machine_deleted",
    f"DROP TABLE {TABLE}",
]


def _run(schema_editor, postgresql, sqlite) -> None:
    vendor = schema_editor.connection.vendor
    statements = {"postgresql": postgresql, "sqlite": sqlite}.get(vendor)
    if statements is None:
        raise NotImplementedError(f"no token generation triggers for {vendor}")
    for statement in statements:
        schema_editor.execute(statement, params=None)


def forwards(apps, schema_editor) -> None:
    _run(schema_editor, POSTGRESQL, SQLITE)


def backwards(apps, schema_editor) -> None:
    _run(schema_editor, POSTGRESQL_UNDO, SQLITE_UNDO)


class Migration(migrations.Migration):
    dependencies = [
        ("agents", "0008_machine_replaced_by"),
    ]

    operations = [migrations.RunPython(forwards, backwards)]
