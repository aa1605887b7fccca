"""The encryption passphrase's rules, generation and files."""

from __future__ import annotations

import stat

import pytest

from agents.runtime import passphrase as pp


def test_it_needs_sixteen_printable_ascii_characters():
    assert pp.validate("a" * 16) == "a" * 16
    with pytest.raises(pp.PassphraseTooShort, match="has 15 characters"):
        pp.validate("a" * 15)
    with pytest.raises(pp.PassphraseNotAscii):
        pp.validate("ä" * 20)
    with pytest.raises(pp.PassphraseNotAscii):
        pp.validate("tab\tinside the passphrase")


def test_generated_passphrases_are_long_random_and_valid():
    first, second = pp.generate(), pp.generate()
    assert first != second and len(first) == 32
    assert pp.validate(first) == first


def test_a_saved_passphrase_is_private_and_never_overwritten(tmp_path):
    path = pp.save("x" * 20, tmp_path / "dir" / "secret.txt")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert pp.read_file(path) == "x" * 20
    with pytest.raises(pp.PassphraseFileError, match="exists already"):
        pp.save("y" * 20, path)
    assert pp.read_file(path) == "x" * 20


def test_a_directory_gets_a_file_inside(tmp_path):
    path = pp.save("z" * 20, tmp_path)
    assert path == tmp_path / "haven-passphrase.txt"


def test_reading_checks_the_rules(tmp_path):
    short = tmp_path / "short"
    short.write_text("short\n")
    with pytest.raises(pp.PassphraseTooShort):
        pp.read_file(short)
    with pytest.raises(pp.PassphraseFileError, match="cannot read"):
        pp.read_file(tmp_path / "missing")


def test_prompting_asks_twice_until_it_matches():
    answers = iter(
        [
            "too short",
            "a long enough passphrase",
            "a different one!!",
            "a long enough passphrase",
            "a long enough passphrase",
        ]
    )
    said = []
    result = pp.prompt_twice(lambda _prompt: next(answers), said.append)
    assert result == "a long enough passphrase"
    assert any("lose" in line for line in said)
    assert any("at least 16" in line for line in said)
    assert any("differ" in line for line in said)
