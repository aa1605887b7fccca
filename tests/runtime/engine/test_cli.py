"""The engine's developer CLI over a local directory."""

from __future__ import annotations

import json

from agents.runtime.engine.cli import main
from tests.runtime.engine.conftest import restored, tree_snapshot


def test_the_cli_backs_up_lists_restores_and_verifies(source, tmp_path, capsys):
    pw = tmp_path / "pw"
    pw.write_text("secret words\n")
    base = ["--repo", str(tmp_path / "repo"), "--password-file", str(pw),
            "--cache-dir", str(tmp_path / "cache")]  # fmt: skip
    assert main([*base, "init", "--kdf-n", "1024"]) == 0
    assert main([*base, "--json", "backup", str(source)]) == 0
    out = capsys.readouterr().out.strip().splitlines()[-1]
    rp = json.loads(out)["recovery_point"]
    assert main([*base, "snapshots"]) == 0
    assert rp in capsys.readouterr().out
    assert main([*base, "ls", rp[:8], str(source)]) == 0
    assert "random.bin" in capsys.readouterr().out
    assert main([*base, "restore", "--target", str(tmp_path / "out"), rp]) == 0
    assert tree_snapshot(restored(tmp_path / "out", source)) == tree_snapshot(source)
    assert main([*base, "verify"]) == 0


def test_the_cli_says_when_the_passphrase_is_wrong(source, tmp_path, capsys):
    pw, bad = tmp_path / "pw", tmp_path / "bad"
    pw.write_text("secret words")
    bad.write_text("secret word")
    repo = ["--repo", str(tmp_path / "repo")]
    assert main([*repo, "--password-file", str(pw), "init", "--kdf-n", "1024"]) == 0
    assert main([*repo, "--password-file", str(bad), "snapshots"]) == 2
    assert "passphrase does not open" in capsys.readouterr().err
