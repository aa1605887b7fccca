"""Start-up refuses bad configuration with a message naming the variable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
GOOD_SECRET = "k3y-" + "abcdefghij" * 6


def manage(*args: str, env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess:
    base = {
        key: value
        for key, value in os.environ.items()
        if key
        not in {
            "DATABASE_URL",
            "REDIS_URL",
            "AZURE_STORAGE_CONNECTION_STRING",
            "SECRET_KEY",
            "DJANGO_ALLOW_ASYNC_UNSAFE",
        }
    }
    base["HAVEN_DATA_DIR"] = str(tmp_path / "data")
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=REPO,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("DATABASE_URL", "mysql://db/haven", "DATABASE_URL: expected a URL starting with"),
        ("REDIS_URL", "localhost:6379", "REDIS_URL: expected a URL starting with redis://"),
        ("REDIS_URL", "redis://127.0.0.1:notaport/0", "REDIS_URL: the URL has an invalid port"),
        (
            "AZURE_STORAGE_CONNECTION_STRING",
            "AccountName=x",
            "AZURE_STORAGE_CONNECTION_STRING: needs",
        ),
        ("HAVEN_DEBUG", "maybe", "HAVEN_DEBUG: expected true or false"),
        ("HAVEN_PORT", "eighty", "HAVEN_PORT: expected a whole number"),
        ("SECRET_KEY", "short", "SECRET_KEY: must be at least 50 characters"),
        (
            "CSRF_TRUSTED_ORIGINS",
            "portal.example.com",
            "CSRF_TRUSTED_ORIGINS: 'portal.example.com'",
        ),
        (
            "HAVEN_TRUSTED_PROXIES",
            "10.0.0.1,proxy.local",
            "HAVEN_TRUSTED_PROXIES: expected IP addresses or networks like 10.0.0.0/8, got 'proxy.local'",
        ),
        ("EMAIL_PORT", "-1", None),
        ("HAVEN_DB_POOL_SIZE", "0", "HAVEN_DB_POOL_SIZE: must be at least 1, got 0"),
        ("HAVEN_DB_POOL_TIMEOUT", "soon", "HAVEN_DB_POOL_TIMEOUT: expected a number of seconds"),
        ("HAVEN_PORTAL_QUEUE_SECONDS", "nan", "HAVEN_PORTAL_QUEUE_SECONDS: expected a number"),
        ("HAVEN_PORTAL_CONCURRENCY", "-3", "HAVEN_PORTAL_CONCURRENCY: must be at least 1"),
        ("HAVEN_REDIS_POOL_SIZE", "many", "HAVEN_REDIS_POOL_SIZE: expected a whole number"),
        ("HAVEN_DB_POOL_MIN", "50", "HAVEN_DB_POOL_MIN: cannot be larger than HAVEN_DB_POOL_SIZE"),
    ],
)
def test_it_refuses_to_start_with_a_bad_value_and_names_the_variable(
    tmp_path, name, value, expected
):
    env = {name: value}
    if name == "EMAIL_PORT":
        env["EMAIL_HOST"] = "smtp.example.com"
        expected = "EMAIL_PORT: must be at least 1"
    result = manage("check", env=env, tmp_path=tmp_path)
    assert result.returncode == 2, result.stderr
    assert f"Haven cannot start: {expected}" in result.stderr
    assert "Traceback" not in result.stderr


def test_it_reads_secrets_from_a_file(tmp_path):
    secret_file = tmp_path / "secret"
    secret_file.write_text(GOOD_SECRET + "\n")
    result = manage(
        "shell",
        "--no-imports",
        "-c",
        "from django.conf import settings; print(settings.SECRET_KEY)",
        env={"SECRET_KEY_FILE": str(secret_file)},
        tmp_path=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == GOOD_SECRET


def test_a_missing_secret_file_is_named(tmp_path):
    result = manage("check", env={"SECRET_KEY_FILE": str(tmp_path / "nope")}, tmp_path=tmp_path)
    assert result.returncode == 2
    assert "SECRET_KEY_FILE: cannot read" in result.stderr


def test_without_a_secret_key_each_installation_generates_its_own(tmp_path):
    show = (
        "shell",
        "--no-imports",
        "-c",
        "from django.conf import settings; print(settings.SECRET_KEY)",
    )
    first = manage(*show, env={}, tmp_path=tmp_path / "a")
    again = manage(*show, env={}, tmp_path=tmp_path / "a")
    other = manage(*show, env={}, tmp_path=tmp_path / "b")
    assert first.stdout == again.stdout
    assert first.stdout != other.stdout
    assert len(first.stdout.strip()) >= 50


def test_check_deploy_is_clean_in_production_mode(tmp_path):
    env = {
        "SECRET_KEY": GOOD_SECRET,
        "HAVEN_HTTPS": "true",
        "ALLOWED_HOSTS": "backup.example.com",
        "CSRF_TRUSTED_ORIGINS": "https://backup.example.com",
        "HAVEN_PUBLIC_URL": "https://backup.example.com",
    }
    result = manage("check", "--deploy", "--fail-level", "WARNING", env=env, tmp_path=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_postgresql_connections_come_from_a_bounded_pool_not_one_per_thread(tmp_path):
    show = (
        "from django.conf import settings; d = settings.DATABASES['default']; "
        "print(d['CONN_MAX_AGE'], d['OPTIONS']['pool'], "
        "settings.CACHES['default']['OPTIONS']['max_connections'], "
        "settings.CHANNEL_LAYERS['default']['BACKEND'], "
        "settings.CELERY_BROKER_POOL_LIMIT)"
    )
    env = {
        "DATABASE_URL": "postgres://haven@db.example.com:5432/haven",
        "REDIS_URL": "redis://redis.example.com:6379/0",
        "HAVEN_DB_POOL_SIZE": "7",
        "HAVEN_DB_POOL_TIMEOUT": "2.5",
        "HAVEN_REDIS_POOL_SIZE": "3",
    }
    result = manage("shell", "--no-imports", "-c", show, env=env, tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    # The channel layer holds two connections per event loop (portal.pools.PubSubChannelLayer).
    assert result.stdout.strip() == (
        "0 {'min_size': 0, 'max_size': 7, 'timeout': 2.5} 3 portal.pools.PubSubChannelLayer 2"
    )
