"""Where the agent keeps its files, and that nobody else can read them."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from agents.runtime import config


def test_the_config_directory_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("HAVEN_AGENT_CONFIG_DIR")
    monkeypatch.setattr(config, "is_root", lambda: False)
    assert config.config_dir() == Path.home() / ".config" / "haven-agent"
    monkeypatch.setenv("HAVEN_AGENT_CONFIG_DIR", str(tmp_path / "elsewhere"))
    assert config.config_dir() == tmp_path / "elsewhere"
    monkeypatch.delenv("HAVEN_AGENT_CONFIG_DIR")
    monkeypatch.setattr(config, "is_root", lambda: True)
    assert config.config_dir() == Path("/etc/haven-agent")
    assert config.default_install_dir() == Path("/opt/haven-agent")


def test_settings_are_saved_private(tmp_path):
    directory = tmp_path / "cfg"
    settings = config.Settings(cache_dir=str(tmp_path / "cache"), proxy_url="http://proxy:3128")
    path = config.save_settings(settings, directory)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert config.load_settings(directory) == settings


def test_an_open_directory_is_tightened(tmp_path):
    directory = tmp_path / "cfg"
    directory.mkdir(mode=0o755)
    directory.chmod(0o755)
    config.save_settings(config.Settings(), directory)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700


def test_proxy_credentials_are_filled_in():
    settings = config.Settings(
        proxy_url="http://proxy.example:3128", proxy_username="me@corp", proxy_password="p:ss"
    )
    assert settings.proxy_with_credentials() == "http://me%40corp:p%3Ass@proxy.example:3128"
    assert settings.proxies() == {
        "http": "http://me%40corp:p%3Ass@proxy.example:3128",
        "https": "http://me%40corp:p%3Ass@proxy.example:3128",
    }
    assert config.Settings().proxies() is None


def test_a_bad_proxy_url_is_refused():
    with pytest.raises(config.ConfigError, match="is not a URL like"):
        config.validate_proxy_url("proxy:3128")


def test_missing_registration_says_how_to_register(tmp_path):
    with pytest.raises(config.ConfigError, match="haven-agent register --vault-credentials"):
        config.require_registration(tmp_path)


def test_a_damaged_registration_is_named(tmp_path):
    (tmp_path / config.REGISTRATION_FILE).write_text("{not json")
    with pytest.raises(config.ConfigError, match="not valid JSON"):
        config.load_registration(tmp_path)


@pytest.mark.parametrize(
    ("text", "rate"),
    [("2MB", 2 * 2**20), ("512 KB", 512 * 2**10), ("1.5GB/s", int(1.5 * 2**30)), ("off", 0)],
)
def test_a_bandwidth_limit_is_a_rate_in_powers_of_1024(text, rate):
    assert config.parse_bandwidth(text) == rate


@pytest.mark.parametrize("text", ["fast", "2 MiB", "-1MB", "10KB"])
def test_a_bandwidth_limit_that_is_no_rate_is_refused(text):
    with pytest.raises(config.ConfigError):
        config.parse_bandwidth(text)


def test_a_bandwidth_limit_reads_back_for_people():
    assert config.format_bandwidth(0) == "unlimited"
    assert config.format_bandwidth(2 * 2**20) == "2 MB/s"
    assert config.format_bandwidth(768 * 2**10) == "768 KB/s"
