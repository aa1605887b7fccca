"""Every URL the portal serves, walked with hostile values, as everyone who could send them.

The routes come from Django's resolver, so a new page is walked the day it is added. For each
route hypothesis draws who asks (nobody, charlie the outsider, bob as Reader, alice the Owner),
GET or POST, a value for each path parameter (ids of alice's and charlie's objects, unknown
ids, huge numbers, other scripts' digits, oversize and NUL-bearing text) and hostile query
strings and form bodies for the parameter names the views read. Every answer must be below
500; a refused request (any 4xx) changes nothing, and nobody but alice changes anything of
alice's, whatever the answer.

Each example runs in a savepoint that is rolled back, so alice's successful writes do not
pile up and every example starts from the same cast. ``derandomize`` keeps the examples the
same from run to run.

Not walked: the websocket ``/ws/live/`` (Channels routes it outside the URL resolver; its
consumer checks the user in tests/portal) and, with a valid token, the agent API (that is
tests/security/test_agent_api_fuzz.py; here it is walked without one).
"""

from __future__ import annotations

import inspect
import re
import time
import uuid
from urllib.parse import quote

import pytest
from django.core.cache import cache
from django.db import transaction
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from agents.models import Machine, MachineToken
from jobs import policy_rules, services
from jobs.models import BackupPolicy, Job, RecoveryPoint
from portal import realtime
from portal.models import Membership, ResourceGroup, Subscription, User
from tests.support import builders
from vaults.models import Vault, VaultCredential

pytestmark = pytest.mark.django_db

EXAMPLES_PER_ROUTE = 10


def _routes() -> list[tuple[str, dict[str, str], object]]:
    """(route, {parameter: converter name}, view) for every URL pattern, includes followed."""

    def walk(patterns, prefix, converters):
        for pattern in patterns:
            route = prefix + str(pattern.pattern)
            found = {**converters, **_converters(pattern)}
            if isinstance(pattern, URLResolver):
                yield from walk(pattern.url_patterns, route, found)
            elif isinstance(pattern, URLPattern):
                yield route, found, pattern.callback

    return sorted(walk(get_resolver().url_patterns, "", {}), key=lambda r: r[0])


def _converters(pattern) -> dict[str, str]:
    return {
        name: type(conv).__name__.removesuffix("Converter").lower()
        for name, conv in getattr(pattern.pattern, "converters", {}).items()
    }


PROJECT_APPS = ("portal", "vaults", "agents", "jobs")
READS = re.compile(
    r"(?:\.get(?:list)?\(|getlist\(\w+,)\s*f?[\"']([a-z][a-z0-9_]*)[\"']"
    r"|(?:GET|POST)\[[\"']([a-z][a-z0-9_]*)[\"']\]"
)
LITERAL = re.compile(r"[\"']([a-z][a-z0-9_:-]{0,20})[\"']")
CALL = re.compile(r"\b(?:(\w+)\.)?(\w+)\(")


def _reads(view, depth: int = 2) -> tuple[set[str], set[str]]:
    """The query/form names a view reads (``request.GET.get("vault")``,
    ``source.getlist("times")``, ...) and the short string literals it compares them with
    (``action == "next"``), from its source and that of the project functions it calls,
    ``depth`` calls deep (``policy_rules.parse_form``, ``_wizard_data``)."""
    func = inspect.unwrap(view)
    try:
        text = inspect.getsource(func)
    except (OSError, TypeError):
        return set(), set()
    names = {a or b for a, b in READS.findall(text)}
    literals = set(LITERAL.findall(text))
    if depth:
        scope = getattr(func, "__globals__", {})
        for owner, called in set(CALL.findall(text)):
            target = scope.get(called) if not owner else getattr(scope.get(owner), called, None)
            module = getattr(target, "__module__", "") or ""
            if callable(target) and module.startswith(PROJECT_APPS):
                more_names, more_literals = _reads(target, depth - 1)
                names |= more_names
                literals |= more_literals
    return names, literals


ROUTES = _routes()
# Names every view might be sent whatever it reads: the ids and choices the issue named.
COMMON_NAMES = (
    "vault",
    "source",
    "target",
    "step",
    "action",
    "page",
    "q",
    "next",
    "status",
    "machine",
)

HOSTILE = [
    "",
    "junk",
    "²",
    "١٢",
    "-1",
    "0",
    "99999999999999999999",
    "9" * 5000,
    "1e309",
    "NaN",
    "x" * 5000,
    "\x00",
    "a\x00b",
    "../../etc/passwd",
    "<script>alert(1)</script>",
    "' OR 1=1 --",
    "%",
    "goto:nowhere",
    "00000000-0000-0000-0000-00000000000g",
    str(uuid.UUID(int=0)),
]
TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
# The owner and the Reader reach the most code; nobody is mostly sent to sign in.
WHO = ("alice", "bob", "charlie", "nobody", "alice", "bob")
# What the sweep sends in each field alone.
SWEEP = ("²", "x" * 5000, "a\x00b")


@pytest.fixture
def cast(alice, bob, charlie, member, vault, monkeypatch):
    """alice's Contoso with a machine, its policy, a job and a recovery point; bob as Reader;
    charlie's Fabrikam with the same."""
    monkeypatch.setattr(services, "_send_to_machine", lambda machine, task, **kw: None)
    monkeypatch.setattr(services, "_enqueue", lambda name, *args: None)
    member("reader")
    ids: dict[str, list[str]] = {}
    fabrikam = Subscription.objects.get(name="Fabrikam")
    their_rg = builders.make_resource_group(subscription=fabrikam, name="their-rg")
    their_vault = builders.make_vault(resource_group=their_rg, name="their-vault")
    for owner, a_vault in ((alice, vault), (charlie, their_vault)):
        machine = builders.make_machine(vault=a_vault, name=f"{owner.username}-01")
        spec = policy_rules.default_spec()
        spec["items"] = ["/srv/data"]
        services.policy_save(machine=machine, spec=spec, user=owner)
        job = services.backup_start(machine=machine)
        ids.setdefault("machine", []).append(str(machine.pk))
        ids.setdefault("job", []).append(str(job.pk))
        ids.setdefault("vault", []).append(str(a_vault.pk))
    # alice's first: the sweep works on hers.
    ids["subscription"] = [str(vault.subscription_id), str(fabrikam.pk)]
    ids["membership"] = [str(m.pk) for m in Membership.objects.order_by("pk")]
    ids["group"] = [str(g.pk) for g in ResourceGroup.objects.order_by("pk")]
    ids["user"] = [str(u.pk) for u in User.objects.order_by("pk")]
    ids["credential"] = [str(uuid.uuid4())]
    yield {"users": {"alice": alice, "bob": bob, "charlie": charlie}, "ids": ids, "vault": vault}
    # The walk's registrations count against the test client's address in the shared cache;
    # later tests that register must not find the limit reached.
    window = int(time.time() // 60)
    cache.delete_many([f"agent-register-rate:127.0.0.1:{w}" for w in (window - 1, window)])


def _kind(name: str) -> str:
    kind = name.removesuffix("_id")
    return {"source": "machine", "target": "machine"}.get(kind, kind)


def _own_id(name: str, converter: str, ids: dict[str, list[str]]) -> str:
    """alice's object for an id slot (ids list hers first), else a plain word."""
    found = ids.get(_kind(name))
    if found:
        return found[0]
    return str(uuid.uuid4()) if converter == "uuid" else "x"


def _path_value(name: str, converter: str, ids: dict[str, list[str]]):
    """A strategy for one path parameter: real ids of both tenants and unknown ones for id
    slots, hostile text for free ones."""
    kind = _kind(name)
    if converter == "uuid":
        return st.sampled_from([*ids.get(kind, []), str(uuid.uuid4()), str(uuid.UUID(int=0))])
    if converter == "int":
        return st.sampled_from([*ids.get(kind, []), "0", "99999999999999999999", "9" * 30])
    if converter == "path":
        return (st.sampled_from(HOSTILE) | TEXT).map(lambda v: quote(v or "x", safe="/"))
    return (st.sampled_from(HOSTILE) | TEXT).map(lambda v: quote(v or "x", safe=""))


def _fields(view, ids: dict[str, list[str]]):
    """Form/query fields for ``view``: any of the names it reads, each with a hostile value,
    one of the choices it knows (so that ``action=next`` meets ``step=x``) or a real id."""
    names, literals = _reads(view)
    known = sorted(literals) + sorted({i for values in ids.values() for i in values})
    value = st.sampled_from(HOSTILE) | st.sampled_from(known) | TEXT
    values = value | st.lists(value, min_size=2, max_size=3)
    return st.fixed_dictionaries(
        {}, optional={name: values for name in sorted(names | set(COMMON_NAMES))}
    )


def _fingerprint(vault: Vault) -> dict:
    """What an outsider or a Reader must never change: alice's subscription and its rows.
    ``everything`` adds the row counts of the whole portal, which a refused request must
    not change either."""
    contoso = vault.subscription_id
    machines = Machine.objects.filter(vault__subscription_id=contoso)
    return {
        "subscription": list(Subscription.objects.filter(pk=contoso).values_list("name")),
        "groups": list(
            ResourceGroup.objects.filter(subscription_id=contoso).values_list("pk", "name")
        ),
        "members": list(
            Membership.objects.filter(subscription_id=contoso).values_list("user_id", "role")
        ),
        "vaults": list(
            Vault.objects.filter(subscription_id=contoso).values_list("pk", "name", "state")
        ),
        "machines": list(machines.values_list("pk", "name", "unregistered_at")),
        "policies": list(
            BackupPolicy.objects.filter(machine__in=machines).values_list("pk", "version")
        ),
        "jobs": list(
            Job.objects.filter(machine__in=machines).values_list(
                "pk", "status", "cancel_requested_at"
            )
        ),
        "credentials": VaultCredential.objects.filter(vault__subscription_id=contoso).count(),
        "tokens": MachineToken.objects.filter(machine__in=machines).count(),
        "users": list(
            User.objects.filter(username__in=("alice", "bob")).values_list(
                "username", "is_active", "password"
            )
        ),
    }


def _everything() -> dict:
    models = (Subscription, ResourceGroup, Membership, User, Vault, VaultCredential)
    models += (Machine, MachineToken, BackupPolicy, Job, RecoveryPoint)
    return {model.__name__: model.objects.count() for model in models}


def _request(client: Client, method: str, url: str, fields: dict):
    if method == "GET":
        return client.get(url, fields)
    return client.post(url, fields)


def _allowed(client: Client, url: str) -> tuple[str, ...]:
    """GET and/or POST, as the view's ``Allow`` header says (both when it takes anything)."""
    answer = client.generic("PATCH", url)
    if answer.status_code != 405:
        return ("GET", "POST")
    allowed = {m.strip() for m in answer.get("Allow", "").split(",")}
    return tuple(m for m in ("GET", "POST") if m in allowed) or ("GET", "POST")


def _url(route: str, values: dict[str, str]) -> str:
    return "/" + re.sub(r"<(?:\w+:)?(\w+)>", lambda m: values[m.group(1)], route)


def _check(cast, who: str, method: str, url: str, fields: dict, *, signed: bool = False):
    """One request in a savepoint that is rolled back; below 500, and no change if refused
    (nor, by anyone but alice, to anything of alice's)."""
    client = Client()
    with transaction.atomic():
        if who != "nobody":
            client.force_login(cast["users"][who])
        before, counts = _fingerprint(cast["vault"]), _everything()
        if url.startswith("/_internal/") and signed:
            # The relay trusts a body signed with the portal's key: a signed body that is
            # not the message it expects must still be refused cleanly.
            raw = repr(fields).encode()
            answer = client.post(
                url,
                raw,
                content_type="application/json",
                headers={"X-Haven-Signature": realtime.relay_signature(raw)},
            )
        else:
            answer = _request(client, method, url, fields)
        after, counts_after = _fingerprint(cast["vault"]), _everything()
        transaction.set_rollback(True)
    seen = f"{method} {url:.300} as {who} with {fields!r:.300}"
    assert answer.status_code < 500, seen
    if answer.status_code >= 400:
        assert (after, counts_after) == (before, counts), f"refused yet changed: {seen}"
    if who != "alice":
        assert after == before, f"{who} changed alice's subscription: {seen}"


@pytest.mark.parametrize(
    ("route", "converters", "view"), ROUTES, ids=[r or "/" for r, _, _ in ROUTES]
)
def test_no_route_answers_a_hostile_request_with_a_5xx_or_a_change(route, converters, view, cast):
    ids = cast["ids"]
    parameters = {name: _path_value(name, conv, ids) for name, conv in converters.items()}
    own = {name: _own_id(name, conv, ids) for name, conv in converters.items()}
    owner = Client()
    owner.force_login(cast["users"]["alice"])
    methods = _allowed(owner, _url(route, own))

    # Every name the view reads, alone but for alice's own ids in the id-like names, with
    # each sweep value, as the owner (who reaches the deepest code): the hostile value meets
    # the parser. POST where the view takes it (a GET form is read the same way). Not for
    # the token-only APIs, which answer 401 here (test_agent_api_fuzz.py sweeps those).
    names, _ = _reads(view)
    if not route.startswith(("api/agent/", "storage/")):
        baseline = {name: ids[_kind(name)][0] for name in names if _kind(name) in ids}
        method = "POST" if "POST" in methods else "GET"
        for name in sorted(names):
            for value in SWEEP:
                _check(cast, "alice", method, _url(route, own), {**baseline, name: value})

    # Then hypothesis: anyone, any of the view's names together, real and foreign ids.
    @settings(
        max_examples=EXAMPLES_PER_ROUTE,
        derandomize=True,
        database=None,
        # No shrinking: the assertion names the request, and shrinking a slow request
        # costs minutes on a small CI machine.
        phases=(Phase.explicit, Phase.generate),
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(
        who=st.sampled_from(WHO),
        method=st.sampled_from(methods),
        values=st.fixed_dictionaries(parameters),
        fields=_fields(view, ids),
        signed=st.booleans(),
    )
    def walk(who, method, values, fields, signed):
        _check(cast, who, method, _url(route, values), fields, signed=signed)

    walk()
