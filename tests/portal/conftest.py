"""alice owns subscription "Contoso" (with resource group rg-web); bob gets whichever role a
test asks for; charlie has no role anywhere."""

from __future__ import annotations

import pytest
from django.test import Client

from portal import services
from portal.models import Membership, Role, User

ROLES = [Role.OWNER, Role.CONTRIBUTOR, Role.BACKUP_OPERATOR, Role.READER]
PASSWORD = "correct horse battery staple"


def make_user(username: str, **fields) -> User:
    return User.objects.create_user(username=username, password=PASSWORD, **fields)


def client_for(user) -> Client:
    client = Client()
    client.force_login(user, backend="django.contrib.auth.backends.ModelBackend")
    return client


@pytest.fixture
def alice(db):
    return make_user("alice", first_name="Alice", last_name="Owner")


@pytest.fixture
def charlie(db):
    return make_user("charlie")


@pytest.fixture
def subscription(alice):
    return services.subscription_create(name="Contoso", owner=alice)


@pytest.fixture
def group(subscription):
    return services.resource_group_create(
        subscription=subscription, name="rg-web", location="West Europe"
    )


@pytest.fixture
def bob_with(subscription):
    """``bob_with(role)``: bob, a member of alice's subscription with that role."""

    def make(role: str) -> User:
        bob = make_user("bob")
        Membership.objects.create(user=bob, subscription=subscription, role=role)
        return bob

    return make


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    # PBKDF2's deliberate slowness would dominate these tests; the hasher is not under test.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
