"""docs/api.md's curl examples, run as written, so the documentation cannot drift from the API.

Each ```sh block of the Examples section is read line by line (a trailing backslash joins
lines): ``export`` lines are the reader's setup and are skipped (the test sets
``HAVEN_URL`` and ``HAVEN_TOKEN`` itself); ``curl`` runs through Django's test client with
its method, headers and body; ``NAME=$(curl … | jq -r EXPR)`` also keeps a field of the
answer in ``$NAME`` for the next examples. An example answers 2xx unless its line ends with
``# answers NNN``. Every answer is checked against the OpenAPI schema too. Between blocks the
portal worker's part is played: a deploying vault becomes ready.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.api.conftest import ApiClient
from vaults.models import Vault

pytestmark = pytest.mark.django_db

DOC = Path(__file__).resolve().parents[2] / "docs" / "api.md"
BLOCK = re.compile(r"```(sh|json)\n(.*?)```", re.S)
ASSIGN = re.compile(r"^([A-Z_]+)=\$\((.*) \| jq -r '?([^')]+)'?\)$")
EXPECT = re.compile(r"\s+# answers (\d{3})$")
VARIABLE = re.compile(r"\$([A-Z_]+)")


def examples() -> list[tuple[str, list[str]]]:
    """(kind, lines) of each block: "sh" to run, "json" the answer the block before gave."""
    text = DOC.read_text().split("## Examples", 1)[1].split("\n## ", 1)[0]
    blocks = []
    for kind, block in BLOCK.findall(text):
        lines = block.replace("\\\n", " ").splitlines()
        blocks.append((kind, [line.strip() for line in lines if line.strip()]))
    return blocks


def jq(value, expression: str):
    """The few jq paths the examples use: ``.a``, ``.a[0].b``."""
    for name, index in re.findall(r"\.(\w+)(?:\[(\d+)\])?", expression):
        value = value[name]
        if index:
            value = value[int(index)]
    return value


def curl(client: ApiClient, command: str, variables: dict):
    words = shlex.split(VARIABLE.sub(lambda m: variables[m.group(1)], command))
    assert words[0] == "curl", command
    method, headers, body, url = "GET", {}, None, None
    words = iter(words[1:])
    for word in words:
        if word == "-s":
            continue
        if word == "-X":
            method = next(words)
        elif word == "-H":
            name, _, value = next(words).partition(": ")
            headers[name] = value
        elif word == "-d":
            body = next(words)
        elif word.startswith("http"):
            url = word
        else:
            raise AssertionError(f"the test does not know curl's {word!r}")
    parts = urlsplit(url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    extra = {f"HTTP_{k.upper().replace('-', '_')}": v for k, v in headers.items()}
    content_type = extra.pop("HTTP_CONTENT_TYPE", "application/json")
    call = getattr(client.client, method.lower())
    if body is not None:
        response = call(path, body, content_type=content_type, **extra)
    else:
        response = call(path, **extra)
    client.check(response)
    return response


def test_every_curl_example_in_the_api_doc_works_as_written(api, alice, world):
    client = api(alice)
    variables = {"HAVEN_URL": "http://testserver", "HAVEN_TOKEN": client.token}
    ran, response = 0, None
    for kind, block in examples():
        if kind == "json":
            assert json.loads(response.content) == json.loads(" ".join(block))
            continue
        for line in block:
            if line.startswith("export "):
                continue
            expected = EXPECT.search(line)
            command = EXPECT.sub("", line)
            assigned = ASSIGN.match(command)
            response = curl(
                client.__class__(client=client.client),
                assigned.group(2) if assigned else command,
                variables,
            )
            ran += 1
            if expected:
                assert response.status_code == int(expected.group(1)), (line, response.content)
            else:
                assert 200 <= response.status_code < 300, (line, response.content)
            if assigned:
                variables[assigned.group(1)] = str(
                    jq(json.loads(response.content), assigned.group(3))
                )
        Vault.objects.filter(state=Vault.State.DEPLOYING).update(state=Vault.State.READY)
    assert ran >= 15
