"""The docs' settings tables say what the code does.

Read from the code, never copied into this test: which environment variables the portal
reads (the typed readers of ``portal.env`` called in ``portal/settings.py``, and any
``os.environ`` read on the portal's side) with their defaults, and which variables and
options the agent (``agents/runtime``, its installer) takes. Then every docs table row
that names one of them with a default must state that default, docs/configuration.md must
list every portal variable, and docs/agent.md every agent one; and a ``haven-agent`` or
``manage.py`` command line the docs show must be one the code accepts.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import os
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.core.management import get_commands, load_command_class

from agents.runtime.cli import build_parser
from portal import env

REPO = Path(__file__).resolve().parents[2]
DOCS = [*sorted((REPO / "docs").glob("*.md")), REPO / "README.md"]
# Where the portal's side may read the environment (STYLE.md: settings only, and the
# command that starts the processes, which reads its bind address before settings load).
PORTAL_CODE = [
    path
    for folder in ("portal", "vaults", "jobs", "agents")
    for path in sorted((REPO / folder).rglob("*.py"))
    if "runtime" not in path.relative_to(REPO).parts and "migrations" not in path.parts
]
AGENT_CODE = sorted((REPO / "agents" / "runtime").rglob("*.py"))
INSTALLER = REPO / "agents" / "installer.sh.in"
# The engine's own command line (``python -m agents.runtime.engine``, a developer's and the
# benchmarks' tool) is documented where the engine is, not in the agent's guide.
ENGINE_CLI = REPO / "agents" / "runtime" / "engine" / "cli.py"

# The readers of portal.env: every public function whose first parameter is the name.
READERS = {
    name: inspect.signature(func)
    for name, func in inspect.getmembers(env, inspect.isfunction)
    if func.__module__ == env.__name__
    and next(iter(inspect.signature(func).parameters), None) == "name"
}
NO_DEFAULT = object()  # the reader returns None when the variable is unset


@dataclass
class Variable:
    name: str
    default: object  # a Python value, NO_DEFAULT, or a set of spellings (see _spellings)
    where: str


def _os_environ_read(call: ast.Call) -> bool:
    """``os.environ.get(...)`` or ``os.getenv(...)``."""
    func = call.func
    if not isinstance(func, ast.Attribute):
        return False
    if func.attr == "getenv":
        return isinstance(func.value, ast.Name) and func.value.id == "os"
    return (
        func.attr == "get"
        and isinstance(func.value, ast.Attribute)
        and func.value.attr == "environ"
    )


def _string_constants(tree: ast.Module) -> dict[str, str]:
    """Module-level ``NAME = "literal"`` (a variable's name kept in a constant)."""
    found = {}
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    found[target.id] = node.value.value
    return found


def _reads(path: Path) -> list[tuple[str, object, ast.Module]]:
    """(variable, its default's node or NO_DEFAULT, tree) for each read of a named variable."""
    tree = ast.parse(path.read_text(), filename=str(path))
    constants = _string_constants(tree)
    found = []
    for node in ast.walk(tree):
        if (  # os.environ["NAME"]: no default
            isinstance(node, ast.Subscript)
            and isinstance(node.value, ast.Attribute)
            and node.value.attr == "environ"
            and isinstance(node.slice, ast.Constant)
            and isinstance(node.ctx, ast.Load)
        ):
            found.append((node.slice.value, NO_DEFAULT, tree))
        if not isinstance(node, ast.Call) or not node.args:
            continue
        first = node.args[0]
        if isinstance(first, ast.Constant) and isinstance(first.value, str):
            name = first.value
        elif isinstance(first, ast.Name) and first.id in constants:
            name = constants[first.id]
        else:
            continue
        if isinstance(node.func, ast.Name) and node.func.id in READERS:
            signature = READERS[node.func.id]
            bound = signature.bind_partial(*node.args, **{k.arg: k.value for k in node.keywords})
            if "default" in bound.arguments:
                default = bound.arguments["default"]
            elif "default" in signature.parameters:
                default = signature.parameters["default"].default
                default = NO_DEFAULT if default is None else ast.Constant(default)
            elif "None" in str(signature.return_annotation):
                default = NO_DEFAULT  # azure_connection_string
            else:  # env_networks: unset is empty
                default = ast.Constant("")
            found.append((name, default, tree))
        elif _os_environ_read(node):
            default = node.args[1] if len(node.args) > 1 else NO_DEFAULT
            found.append((name, default, tree))
    return found


def _settings_names(tree: ast.Module) -> dict[str, tuple[str, ast.expr]]:
    """A module-level setting assigned from one variable: Python name -> (variable, default)."""
    names = {}
    for node in tree.body:
        if not isinstance(node, ast.Assign):
            continue
        for call in ast.walk(node.value):
            if (
                isinstance(call, ast.Call)
                and isinstance(call.func, ast.Name)
                and call.func.id in READERS
                and call.args
                and isinstance(call.args[0], ast.Constant)
            ):
                default = call.args[1] if len(call.args) > 1 else None
                for target in node.targets:
                    if isinstance(target, ast.Name) and default is not None:
                        names[target.id] = (call.args[0].value, default)
                break
    return names


def _spellings(node: ast.expr, names: dict[str, tuple[str, ast.expr]]) -> set[str] | None:
    """How the docs may write a default that is an expression: ``str(DATA_DIR / "x")`` as
    ``$HAVEN_DATA_DIR/x``, ``f"http://h:{HAVEN_PORT}"`` as ``http://h:$HAVEN_PORT`` or with
    that variable's own default. None when it is not such an expression."""
    if isinstance(node, ast.Constant):
        return {str(node.value)}
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "str":
        return _spellings(node.args[0], names) if len(node.args) == 1 else None
    if isinstance(node, ast.Name):
        if node.id == "BASE_DIR":  # the checkout
            return {"."}
        if node.id in names:
            variable, default = names[node.id]
            return {f"${variable}"} | (_spellings(default, names) or set())
        return None
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
        left, right = _spellings(node.left, names), _spellings(node.right, names)
        if left is None or right is None:
            return None
        return {f"{a}/{b}" for a in left for b in right}
    if isinstance(node, ast.JoinedStr):
        parts: set[str] = {""}
        for value in node.values:
            if isinstance(value, ast.FormattedValue):
                piece = _spellings(value.value, names)
            else:
                piece = _spellings(value, names)
            if piece is None:
                return None
            parts = {a + b for a in parts for b in piece}
        return parts
    return None


def _default(node: ast.expr | object, names: dict[str, tuple[str, ast.expr]]) -> object:
    if node is NO_DEFAULT:
        return NO_DEFAULT
    assert isinstance(node, ast.expr)
    try:
        return ast.literal_eval(node)
    except ValueError:
        return _spellings(node, names)  # None: an expression the docs describe in words


def portal_variables() -> dict[str, Variable]:
    variables: dict[str, Variable] = {}
    for path in PORTAL_CODE:
        for name, node, tree in _reads(path):
            if not name.isupper():
                continue
            where = str(path.relative_to(REPO))
            variables[name] = Variable(name, _default(node, _settings_names(tree)), where)
    return variables


def agent_variables() -> dict[str, str]:
    """HAVEN_* variables the agent reads -> the doc that must name them."""
    found = {}
    for path in AGENT_CODE:
        for name, _node, _tree in _reads(path):
            if name.startswith("HAVEN_"):
                found[name] = "docs/architecture.md" if path == ENGINE_CLI else "docs/agent.md"
    for name in re.findall(r"\$\{?(HAVEN_[A-Z0-9_]+)", INSTALLER.read_text()):
        found[name] = "docs/agent.md"
    return found


@dataclass
class Row:
    doc: str
    line: int
    names: list[str]
    cells: list[str]
    header: list[str]


def _cells(line: str) -> list[str]:
    # A "|" inside a code span is text, not a column.
    masked = re.sub(r"`[^`]*`", lambda m: m.group(0).replace("|", "\0"), line.strip())
    return [c.strip().replace("\0", "|") for c in masked.strip("|").split("|")]


def table_rows() -> list[Row]:
    rows = []
    for path in DOCS:
        lines = path.read_text().splitlines()
        header: list[str] = []
        for number, line in enumerate(lines, 1):
            if not line.startswith("|"):
                header = []
                continue
            if re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", line.strip()):
                header = [c.lower() for c in _cells(lines[number - 2])]
                continue
            if not header:
                continue
            cells = _cells(line)
            names = re.findall(r"`([A-Z][A-Z0-9_]+)(?:=[^`]*)?`", cells[0])
            rows.append(Row(str(path.relative_to(REPO)), number, names, cells, header))
    return rows


def _stated(cell: str) -> str:
    """The value a default cell states: its first code span, else its first words."""
    span = re.search(r"`([^`]*)`", cell)
    if span:
        return span.group(1).strip()
    return re.split(r"\s+\(|:|;", cell, maxsplit=1)[0].strip()


def _agrees(default: object, cell: str) -> bool:
    stated = _stated(cell)
    if isinstance(default, bool):
        return stated.lower() == str(default).lower()
    if isinstance(default, int | float):
        number = re.search(r"-?\d[\d,]*(?:\.\d+)?", stated)
        return number is not None and float(number.group(0).replace(",", "")) == default
    if default in ("", [], ()):
        return "empty" in cell.lower()
    if isinstance(default, list):
        return [item.strip() for item in stated.split(",")] == default
    if isinstance(default, str):
        return stated == default
    if isinstance(default, set):
        return stated in default
    raise AssertionError(f"no rule for a default like {default!r}")


def test_every_variable_the_portal_reads_is_in_the_configuration_reference():
    variables = portal_variables()
    assert "HAVEN_AGENT_OFFLINE_SECONDS" in variables  # the reading found the settings
    listed = {
        name
        for row in table_rows()
        if row.doc == "docs/configuration.md" and "variable" in row.header
        for name in row.names
    }
    missing = sorted(
        f"{v.name} (read in {v.where})" for v in variables.values() if v.name not in listed
    )
    assert not missing, "not in a table of docs/configuration.md: " + ", ".join(missing)


def test_every_default_a_docs_table_states_is_the_codes():
    variables = portal_variables()
    checked, wrong = 0, []
    for row in table_rows():
        if "default" not in row.header:
            continue
        cell = row.cells[row.header.index("default")]
        for name in row.names:
            variable = variables.get(name)
            if variable is None or variable.default in (NO_DEFAULT, None):
                continue  # unset means "none" in words, or a default described in words
            checked += 1
            if not _agrees(variable.default, cell):
                code = variable.default
                if isinstance(code, set):
                    code = " or ".join(sorted(code))
                wrong.append(
                    f"{row.doc}:{row.line} says {name} defaults to {cell!r}; "
                    f"{variable.where} uses {code!r}"
                )
    assert checked > 40, f"only {checked} defaults found in the docs' tables"
    assert not wrong, "\n".join(wrong)


def _code_files():
    """The repository's code and build files, not the docs nor this folder's tests (which
    name variables without reading them), nor installed or generated trees."""
    skip = {".git", ".venv", "node_modules", "var", "docs", "__pycache__"}
    for folder, subfolders, files in os.walk(REPO):
        subfolders[:] = [name for name in subfolders if name not in skip]
        for name in files:
            if name.endswith((".py", ".sh.in")) or name == "Makefile":
                yield Path(folder, name)


def test_every_variable_named_in_a_docs_settings_table_is_read_somewhere():
    """A documented variable that nothing reads is a promise nobody keeps."""
    named = {n for path in _code_files() for n in re.findall(r"HAVEN_\w+", path.read_text())}
    stale = sorted(
        f"{row.doc}:{row.line} {name}"
        for row in table_rows()
        if "variable" in row.header
        for name in row.names
        if name.startswith("HAVEN_") and name not in named
    )
    assert not stale, "documented but read nowhere: " + ", ".join(stale)


def test_every_variable_the_agent_reads_is_documented():
    variables = agent_variables()
    assert "HAVEN_AGENT_CONFIG_DIR" in variables and "HAVEN_AGENT_PIP_ARGS" in variables
    missing = sorted(
        f"{name} (in {doc})"
        for name, doc in variables.items()
        if not re.search(rf"`\$?{name}`", (REPO / doc).read_text())
    )
    assert not missing, "not documented: " + ", ".join(missing)


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _options(parser, path=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _options(sub, (*path, name))
        for option in action.option_strings:
            if option.startswith("--") and option != "--help":
                yield path, option


AGENT_DOCS = ("docs/agent.md", "docs/restore.md")


def test_every_option_of_haven_agent_is_documented():
    text = "\n".join((REPO / doc).read_text() for doc in AGENT_DOCS)
    missing = sorted(
        f"haven-agent {' '.join(path)} {option}".replace("  ", " ")
        for path, option in _options(build_parser())
        if not re.search(rf"{re.escape(option)}(?![\w-])", text)
    )
    assert not missing, f"not in {' or '.join(AGENT_DOCS)}: " + ", ".join(missing)


def _commands_in_docs():
    """(doc, command line) for each ``haven-agent …`` in a code span or code block."""
    for path in DOCS:
        text = path.read_text()
        pieces = re.findall(r"`([^`\n]+)`", text)
        in_block = False
        for line in text.splitlines():
            if line.startswith("```"):
                in_block = not in_block
            elif in_block:
                pieces.append(line.split(" #")[0])
        for piece in pieces:
            for match in re.finditer(r"(?<![\w/.-])haven-agent((?:\s+[^\s|;&#]+)*)", piece):
                yield str(path.relative_to(REPO)), match.group(0)


def test_every_haven_agent_command_line_in_the_docs_is_one_the_agent_accepts():
    root, wrong, seen = build_parser(), [], 0
    for doc, line in _commands_in_docs():
        words = line.split()[1:]
        parser, path = root, []
        while words and words[0] in _subcommands(parser):
            path.append(words.pop(0))
            parser = _subcommands(parser)[path[-1]]
        if not path:
            if words and not words[0].startswith("-"):
                wrong.append(f"{doc}: {line!r}: no command {words[0]!r}")
            continue
        seen += 1
        for word in words:
            option = word.strip("[]()").split("=")[0]  # [--fraction F], (--a | --b)
            if option.startswith("--") and option not in parser._option_string_actions:
                wrong.append(f"{doc}: {line!r}: {' '.join(path)} has no {option}")
    assert seen > 30
    assert not wrong, "\n".join(wrong)


def test_the_installers_options_are_the_ones_docs_agent_lists():
    script = INSTALLER.read_text()
    accepted = set(re.findall(r"^\s+(--[a-z-]+)\)", script, re.M))
    assert "--prefix" in accepted
    section = (REPO / "docs/agent.md").read_text().split("## Install", 1)[1].split("\n## ")[0]
    listed = {
        option
        for row in section.splitlines()
        if row.startswith("| `--")
        for option in re.findall(r"`(--[a-z-]+)", _cells(row)[0])
    }
    assert listed == accepted


@pytest.mark.parametrize(
    "cell, default, agrees",
    [
        ("`180`", 180, True),
        ("300", 180, False),
        ("`3` (at least 0.1)", 3.0, True),
        ("`31536000`", 31536000, True),
        ("`false`", False, True),
        ("(empty)", "", True),
        ("`localhost,127.0.0.1`", ["localhost", "127.0.0.1", "[::1]"], False),
        ("`$HAVEN_DATA_DIR/storage`", {"$HAVEN_DATA_DIR/storage"}, True),
    ],
)
def test_a_stated_default_is_read_as_a_person_reads_it(cell, default, agrees):
    assert _agrees(default, cell) is agrees


def test_every_manage_py_command_line_in_the_docs_is_one_haven_has():
    commands, wrong, seen = get_commands(), [], 0
    for path in DOCS:
        for piece in re.findall(r"`([^`\n]*manage\.py [^`\n]*)`", path.read_text()):
            words = piece.split("manage.py", 1)[1].split()
            if words[0] not in commands:
                wrong.append(f"{path.name}: {piece!r}: no command {words[0]!r}")
                continue
            seen += 1
            parser = load_command_class(commands[words[0]], words[0]).create_parser(
                "manage.py", words[0]
            )
            for word in words[1:]:
                option = word.split("=")[0]
                if option.startswith("--") and option not in parser._option_string_actions:
                    wrong.append(f"{path.name}: {piece!r}: {words[0]} has no {option}")
    assert seen > 5
    assert not wrong, "\n".join(wrong)


def test_every_make_target_the_docs_name_is_in_the_makefile():
    targets = set(re.findall(r"^([\w.-]+):", (REPO / "Makefile").read_text(), re.M))
    named = {
        (path.name, target)
        for path in DOCS
        for target in re.findall(r"`make ([a-z][\w-]*)", path.read_text())
    }
    assert {"run", "test"} <= {target for _, target in named}
    assert not [f"{doc}: make {target}" for doc, target in sorted(named) if target not in targets]


def test_every_periodic_task_is_in_the_list_of_docs_jobs():
    """``register_periodic(name, task, seconds)`` calls, read from the apps' code."""
    registered = {
        call.args[1].value
        for path in PORTAL_CODE
        for call in ast.walk(ast.parse(path.read_text()))
        if isinstance(call, ast.Call)
        and isinstance(call.func, ast.Name)
        and call.func.id == "register_periodic"
        and isinstance(call.args[1], ast.Constant)
    }
    assert {"jobs.schedule_tick", "agents.offline_announce"} <= registered
    section = (REPO / "docs/jobs.md").read_text().split("## Periodic tasks", 1)[1]
    section = section.split("\n## ", 1)[0]
    missing = sorted(task for task in registered if f"`{task}`" not in section)
    assert not missing, "not in docs/jobs.md, Periodic tasks: " + ", ".join(missing)
