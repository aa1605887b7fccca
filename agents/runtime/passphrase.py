"""The encryption passphrase: rules, generation, saving, reading.

The passphrase never leaves the machine: it derives the key that wraps the repository's
master key, and only the wrapped key goes to storage. Lose it and the backups are lost.
"""

from __future__ import annotations

import os
import secrets
import string
from collections.abc import Mapping
from pathlib import Path

from agents.runtime import config

MIN_LENGTH = 16
PRINTABLE = frozenset(chr(c) for c in range(0x20, 0x7F))
# A generated passphrase avoids characters people misread or shells mangle.
_ALPHABET = "".join(
    ch for ch in string.ascii_letters + string.digits + "-_.+=%@" if ch not in "Il1O0o"
)

LOSS_WARNING = (
    "Save the encryption passphrase in a secure place away from this machine. If you lose "
    "or forget it, nobody (not the portal's operators either) can recover the backup data: "
    "you need it to restore."
)


class PassphraseError(ValueError):
    """The passphrase breaks a rule; the message says which."""


class PassphraseTooShort(PassphraseError):
    def __init__(self, length: int):
        super().__init__(f"the passphrase has {length} characters; it needs at least {MIN_LENGTH}")


class PassphraseNotAscii(PassphraseError):
    def __init__(self):
        super().__init__(
            "the passphrase may contain only printable ASCII characters (letters, digits, "
            "punctuation and spaces), so that it can be typed on any keyboard when restoring"
        )


class PassphraseMismatch(PassphraseError):
    def __init__(self):
        super().__init__("the two passphrases differ; type the same passphrase twice")


class PassphraseFileError(PassphraseError):
    """The passphrase file cannot be read or written."""


PASSPHRASE_FILE_ENV = "HAVEN_AGENT_PASSPHRASE_FILE"
SAVED_NAME = "passphrase"  # in the agent's config directory


def saved_passphrase(settings, extra: Mapping | None = None) -> str | None:
    """This machine's own passphrase as saved on it, or None; the one search order for
    scheduled and portal-started jobs and the recovery commands: ``extra["passphrase"]``
    (tests and embedders), then the file named by ``settings.passphrase_file``
    (``haven-agent configure --passphrase-file``), then ``$HAVEN_AGENT_PASSPHRASE_FILE``,
    then ``passphrase`` in the agent's config directory."""
    if extra and extra.get("passphrase"):
        return extra["passphrase"]
    path = saved_path(settings)
    return read_file(path) if path is not None else None


def saved_path(settings) -> Path | None:
    """The file ``saved_passphrase`` reads this machine's passphrase from, or None."""
    for candidate in (
        getattr(settings, "passphrase_file", ""),
        os.environ.get(PASSPHRASE_FILE_ENV, ""),
        str(config.config_dir() / SAVED_NAME),
    ):
        if candidate and Path(candidate).exists():
            return Path(candidate)
    return None


def validate(passphrase: str) -> str:
    """Return ``passphrase`` or raise the rule it breaks (ASCII is checked first)."""
    if any(ch not in PRINTABLE for ch in passphrase):
        raise PassphraseNotAscii()
    if len(passphrase) < MIN_LENGTH:
        raise PassphraseTooShort(len(passphrase))
    return passphrase


def generate(length: int = 32) -> str:
    """A random passphrase (32 characters from 57 symbols: about 186 bits)."""
    return "".join(secrets.choice(_ALPHABET) for _ in range(max(length, MIN_LENGTH)))


def save(passphrase: str, path: Path) -> Path:
    """Write the passphrase to a new file readable only by this user (0600)."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / "haven-passphrase.txt"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise PassphraseFileError(
            f"{path} exists already; choose another file (an existing passphrase is never "
            "overwritten)"
        ) from None
    except OSError as exc:
        raise PassphraseFileError(
            f"cannot write the passphrase to {path}: {exc.strerror}"
        ) from None
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(passphrase + "\n")
    os.chmod(path, 0o600)
    return path


def replace_file(passphrase: str, path: Path) -> Path:
    """Overwrite the saved passphrase in ``path`` (a changed passphrase): written to a new
    0600 file beside it, then renamed over it, so a crash leaves the old or the new one."""
    path = Path(path).expanduser()
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(validate(passphrase) + "\n")
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise PassphraseFileError(
            f"cannot write the passphrase to {path}: {exc.strerror}"
        ) from None
    return path


def read_file(path: Path) -> str:
    """The passphrase in ``path``: its first line, without the line ending."""
    try:
        raw = Path(path).expanduser().read_bytes()
    except OSError as exc:
        raise PassphraseFileError(
            f"cannot read the passphrase file {path}: {exc.strerror}"
        ) from None
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise PassphraseNotAscii() from None
    return validate(text.splitlines()[0] if text.splitlines() else "")


def prompt_twice(getpass, write=print) -> str:
    """Ask for a new passphrase twice, repeating until it follows the rules."""
    write(LOSS_WARNING)
    while True:
        first = getpass(f"Encryption passphrase (at least {MIN_LENGTH} characters): ")
        try:
            validate(first)
        except PassphraseError as exc:
            write(f"error: {exc}")
            continue
        second = getpass("Type the passphrase again: ")
        if first != second:
            write(f"error: {PassphraseMismatch()}")
            continue
        return first
