"""The token counter (``0009_token_generation``) also moves when the token or machine table
is emptied with ``TRUNCATE`` on PostgreSQL — a statement its row and delete triggers do not
see (a test database's flush, a restore by hand). SQLite has no ``TRUNCATE``: its ``DELETE``
without a condition fires the delete triggers already."""

from django.db import migrations

POSTGRESQL = [
    "CREATE TRIGGER agents_token_truncated AFTER TRUNCATE ON agents_machinetoken "
    "FOR EACH STATEMENT EXECUTE FUNCTION agents_token_generation_bump()",
    "CREATE TRIGGER agents_machine_truncated AFTER TRUNCATE ON agents_machine "
    "FOR EACH STATEMENT EXECUTE FUNCTION agents_token_generation_bump()",
]
POSTGRESQL_UNDO = [
    "DROP TRIGGER agents_token_truncated ON agents_machinetoken",
    "DROP TRIGGER agents_machine_truncated ON agents_machine",
]


def _run(schema_editor, statements) -> None:
    if schema_editor.connection.vendor != "postgresql":
        return
    for statement in statements:
        schema_editor.execute(statement, params=None)


def forwards(apps, schema_editor) -> None:
    _run(schema_editor, POSTGRESQL)


def backwards(apps, schema_editor) -> None:
    _run(schema_editor, POSTGRESQL_UNDO)


class Migration(migrations.Migration):
    dependencies = [
        ("agents", "0009_token_generation"),
    ]

    operations = [migrations.RunPython(forwards, backwards)]
