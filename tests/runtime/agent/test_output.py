"""What haven-agent prints (``agents.runtime.output``): ``--json`` on every command with one
JSON document on stdout, errors in it too; progress as a bar on a terminal, plain lines
in a log, JSON lines on stderr with ``--json``."""

from __future__ import annotations

import argparse
import io
import json

from agents.runtime import cli, output


def leaf_commands(parser: argparse.ArgumentParser, prefix=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from leaf_commands(sub, (*prefix, name))
            return
    yield prefix, parser


def test_every_command_takes_json():
    commands = dict(leaf_commands(cli.build_parser()))
    assert {("status",), ("check",), ("policy", "show"), ("seed", "export"), ("verify",),
            ("backup",), ("restore",), ("register",), ("recovery-passphrase",)} <= set(commands)  # fmt: skip
    missing = [" ".join(c) for c, p in commands.items() if "--json" not in p._option_string_actions]
    assert missing == []


def test_json_output_is_one_document_with_the_commands_data(capsys):
    assert cli.main(["policy", "show", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is True and doc["exit_code"] == 0 and doc["policy"] is None
    assert doc["messages"] == [
        "No backup policy yet: set one in the portal (the machine's Backup policy)."
    ]


def test_an_error_is_json_too_with_its_message_and_nothing_on_stderr(capsys):
    assert cli.main(["backup", "--wait", "--json"]) == 1
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    assert doc["ok"] is False and doc["exit_code"] == 1
    assert "not registered" in doc["error"]
    assert captured.err == ""
    # Without --json: the one error line people read.
    assert cli.main(["backup"]) == 1
    captured = capsys.readouterr()
    assert (
        captured.out == ""
        and captured.err.startswith("error: ")
        and "not registered" in captured.err
    )


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def feed(progress, steps=4):
    for i in range(1, steps + 1):
        progress.update(done=i * 1024 * 1024, total=steps * 1024 * 1024, count=i, count_total=steps,
                        rate_bps=1024 * 1024, phase="backing_up")  # fmt: skip
    progress.close()


def test_a_terminal_gets_a_bar_with_rate_and_eta(monkeypatch):
    out, err = Terminal(), io.StringIO()
    progress = output.Output(stdout=out, stderr=err).progress("backing up")
    assert isinstance(progress, output.BarProgress)
    feed(progress)
    bar = err.getvalue()
    assert "backing up" in bar and "100%" in bar and "4.00M/4.00M" in bar
    assert "B/s" in bar and "<" in bar  # the rate, and tqdm's elapsed<remaining
    assert "4 of 4 files" in bar and out.getvalue() == ""


def test_a_log_gets_plain_lines_with_rate_and_eta(monkeypatch):
    monkeypatch.setattr(output, "PLAIN_INTERVAL_S", 0)
    out, err = io.StringIO(), io.StringIO()
    progress = output.Output(stdout=out, stderr=err).progress("verifying", count_unit="packs")
    assert isinstance(progress, output.PlainProgress)
    feed(progress)
    lines = out.getvalue().splitlines()
    assert lines[0] == "verifying: 1 of 4 packs, 1.0 MB of 4.0 MB (25%), 1.0 MB/s, ETA 0:00:03"
    assert lines[-1].startswith("verifying: 4 of 4 packs, 4.0 MB of 4.0 MB (100%)")
    assert "\r" not in out.getvalue() and err.getvalue() == ""


def test_json_progress_is_json_lines_on_stderr_and_stdout_stays_one_document():
    out, err = Terminal(), io.StringIO()
    o = output.Output(json_mode=True, stdout=out, stderr=err)
    feed(o.progress("restoring"))
    o.say("Restored 4 files.")
    o.result({"files": 4})
    assert o.finish(0) == 0
    events = [json.loads(line) for line in err.getvalue().splitlines()]
    # At most one a second, and the last figures at the end.
    assert len(events) == 2 and events[-1]["bytes_done"] == events[-1]["bytes_total"]
    assert events[0]["eta_s"] == 3.0 and events[0]["count_unit"] == "files"
    assert json.loads(out.getvalue()) == {
        "ok": True, "exit_code": 0, "files": 4, "messages": ["Restored 4 files."]
    }  # fmt: skip
