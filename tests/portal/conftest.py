"""The portal's tests use the shared cast (tests/conftest.py) with three differences: here
Contoso is made through ``subscription_create`` (so alice has its notification) with resource
group rg-web (``group``); charlie owns nothing at all (the role matrix has him create
"Fabrikam"); and bob gets his role through ``bob_with(role)``."""

from __future__ import annotations

import pytest
from django.test import Client

from portal import services
from portal.models import Role, User
from tests.support import builders

ROLES = [Role.OWNER, Role.CONTRIBUTOR, Role.BACKUP_OPERATOR, Role.READER]
PASSWORD = builders.PASSWORD


def make_user(username: str, **fields) -> User:
    return builders.make_user(username=username, **fields)


def client_for(user) -> Client:
    client = Client()
    client.force_login(user, backend="django.contrib.auth.backends.ModelBackend")
    return client


@pytest.fixture
def charlie(db) -> User:
    """A user with no role anywhere. The shared charlie owns Fabrikam, and an Owner of any
    subscription may manage users and create subscriptions: the role matrix's outsider may not."""
    return make_user("charlie")


@pytest.fixture
def subscription(alice):
    """Contoso as the service makes it: alice also gets "Subscription created"."""
    return services.subscription_create(name="Contoso", owner=alice)


@pytest.fixture
def group(subscription):
    return services.resource_group_create(
        subscription=subscription, name="rg-web", location="West Europe"
    )


@pytest.fixture
def bob_with(member):
    """``bob_with(role)``: bob, a member of alice's subscription with that role."""
    return member
