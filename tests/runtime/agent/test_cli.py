"""haven-agent's commands without a portal: status, configure, usage errors, the unit."""

from __future__ import annotations

import json

from agents.runtime import cli, config


def test_status_says_when_not_registered(capsys):
    assert cli.main(["status"]) == 3
    assert "not registered to any vault" in capsys.readouterr().out
    assert cli.main(["status", "--json"]) == 3
    assert json.loads(capsys.readouterr().out)["registered"] is False


def test_configure_writes_the_installation_settings(tmp_path, capsys):
    password = tmp_path / "proxy-password"
    password.write_text("hunter2\n")
    assert (
        cli.main(
            [
                "configure",
                "--cache-dir",
                str(tmp_path / "cache"),
                "--proxy",
                "http://proxy:3128",
                "--proxy-user",
                "me",
                "--proxy-password-file",
                str(password),
            ]
        )
        == 0
    )
    settings = config.load_settings()
    assert settings.cache_dir == str(tmp_path / "cache") and settings.proxy_password == "hunter2"
    assert "hunter2" not in capsys.readouterr().out
    assert (tmp_path / "cache").is_dir()
    assert cli.main(["configure", "--no-proxy"]) == 0
    assert config.load_settings().proxy_url == ""


def test_configure_sets_and_lifts_a_bandwidth_limit(tmp_path, capsys):
    assert cli.main(["configure", "--bandwidth-limit", "2MB"]) == 0
    assert config.load_settings().bandwidth_limit == 2 * 2**20
    assert "bandwidth limit:  2 MB/s" in capsys.readouterr().out
    assert cli.main(["configure", "--bandwidth-limit", "fast"]) == 1
    assert "is not a rate like 512KB" in capsys.readouterr().err
    assert cli.main(["configure", "--bandwidth-limit", "off"]) == 0
    assert config.load_settings().bandwidth_limit == 0


def test_register_without_a_passphrase_source_explains(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli, "_interactive", lambda: False)
    assert cli.main(["register"]) == 1
    assert "pass --vault-credentials FILE" in capsys.readouterr().err


def test_a_missing_credentials_file_is_named(tmp_path, capsys):
    assert cli.main(["register", "--vault-credentials", str(tmp_path / "nope")]) == 1
    assert "cannot read the vault credentials file" in capsys.readouterr().err


def test_install_service_writes_a_unit(tmp_path, capsys):
    assert cli.main(["install-service", "--unit-dir", str(tmp_path)]) == 0
    unit = (tmp_path / "haven-agent.service").read_text()
    assert "ExecStart=" in unit and " worker" in unit and "Restart=always" in unit
    assert f"HAVEN_AGENT_CONFIG_DIR={config.config_dir().resolve()}" in unit


def test_worker_needs_a_registration(capsys):
    assert cli.main(["worker"]) == 1
    assert "not registered" in capsys.readouterr().err
