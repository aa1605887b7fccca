"""Vault credentials: issuing, the file format, and every way verification refuses a file."""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.utils import timezone

from portal import signing
from tests.vaults.conftest import make_vault
from vaults import credentials as vc
from vaults.models import Vault, VaultCredential

pytestmark = pytest.mark.usefixtures("vault_env")


@pytest.fixture
def issued(deployed_vault, alice):
    return vc.credentials_issue(vault=deployed_vault, issued_by=alice)


def reissue(content: bytes, mutate) -> bytes:
    document = json.loads(content)
    mutate(document)
    return json.dumps(document).encode()


def test_the_file_is_named_after_the_vault_and_the_day(issued, deployed_vault):
    filename, _, record = issued
    assert filename == f"vault-one_{record.issued_at:%Y-%m-%d}.VaultCredentials"


def test_the_file_holds_the_portal_and_the_vault_identity(issued, deployed_vault, subscription):
    _, content, record = issued
    document = json.loads(content)
    assert document["format"] == "haven-vault-credentials/1"
    creds = document["credentials"]
    assert creds["portal_url"] == "https://haven.example.test"
    assert creds["portal_key_fingerprint"] == signing.key_fingerprint()
    assert creds["portal_public_key"] == signing.public_key_b64()
    assert creds["vault_id"] == str(deployed_vault.pk)
    assert creds["vault_name"] == "vault-one"
    assert creds["subscription_id"] == str(subscription.pk)
    assert creds["subscription_name"] == "Contoso"
    assert creds["resource_group"] == "backup-rg"
    assert creds["location"] == "West Europe"
    assert creds["credential_id"] == str(record.pk)
    assert creds["issued_at"].endswith("Z") and creds["expires_at"].endswith("Z")


def test_credentials_are_valid_for_ten_days(issued):
    _, _, record = issued
    assert record.expires_at - record.issued_at == timedelta(days=10)


def test_the_portal_keeps_only_a_hash_of_the_secret(issued):
    _, content, record = issued
    secret = json.loads(content)["credentials"]["registration_secret"]
    assert len(secret) >= 40
    assert record.secret_hash == hashlib.sha256(secret.encode()).hexdigest()
    stored = [str(v) for v in VaultCredential.objects.values_list(flat=False).get(pk=record.pk)]
    assert secret not in stored


def test_the_signature_covers_the_canonical_serialisation(issued):
    _, content, _ = issued
    document = json.loads(content)
    assert signing.verify(vc.canonical(document["credentials"]), document["signature"])


def test_a_fresh_file_verifies(issued):
    _, content, record = issued
    assert vc.credentials_verify(content) == record


def test_reformatting_the_file_does_not_break_it(issued):
    _, content, record = issued
    compact = json.dumps(json.loads(content), separators=(",", ":")).encode()
    assert vc.credentials_verify(compact) == record


@pytest.mark.parametrize(
    "field,value",
    [
        ("vault_name", "other-vault"),
        ("expires_at", "2099-01-01T00:00:00Z"),
        ("portal_url", "https://evil.example"),
        ("registration_secret", "guessed"),
        ("location", "East US"),
    ],
)
def test_any_edit_is_rejected_as_tampered(issued, field, value):
    _, content, _ = issued
    edited = reissue(content, lambda d: d["credentials"].__setitem__(field, value))
    with pytest.raises(vc.CredentialsTampered) as caught:
        vc.credentials_verify(edited)
    assert "Download the credentials again" in str(caught.value)


def test_a_damaged_signature_is_rejected_as_tampered(issued):
    _, content, _ = issued
    with pytest.raises(vc.CredentialsTampered):
        vc.credentials_verify(reissue(content, lambda d: d.__setitem__("signature", "!!!")))


def test_a_file_signed_by_another_portal_is_foreign(issued):
    _, content, _ = issued
    other = Ed25519PrivateKey.generate()
    document = json.loads(content)
    creds = document["credentials"]
    creds["portal_key_fingerprint"] = "0123456789abcdef"
    creds["portal_url"] = "https://other-haven.example"
    document["signature"] = base64.b64encode(other.sign(vc.canonical(creds))).decode()
    with pytest.raises(vc.CredentialsForeign) as caught:
        vc.credentials_verify(json.dumps(document).encode())
    assert "another Haven portal" in str(caught.value)
    assert "other-haven.example" in str(caught.value)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"not json",
        b"\xff\xfe",
        b"[]",
        b'{"format": "something-else"}',
        b'{"format": "haven-vault-credentials/1"}',
        b'{"format": "haven-vault-credentials/1", "credentials": {}, "signature": "x"}',
        b"x" * (70 * 1024),
    ],
)
def test_garbage_is_malformed(content):
    with pytest.raises(vc.CredentialsMalformed):
        vc.credentials_verify(content)


def test_missing_fields_are_named(issued):
    _, content, _ = issued
    edited = reissue(content, lambda d: d["credentials"].pop("vault_id"))
    with pytest.raises(vc.CredentialsMalformed) as caught:
        vc.credentials_verify(edited)
    assert "vault_id" in str(caught.value)


def test_expired_credentials_are_refused(issued):
    _, content, record = issued
    with pytest.raises(vc.CredentialsExpired) as caught:
        vc.credentials_verify(content, now=record.expires_at + timedelta(seconds=1))
    assert "expired" in str(caught.value) and "10 days" in str(caught.value)
    assert vc.credentials_verify(content, now=record.expires_at - timedelta(seconds=1))


def test_revoked_credentials_are_refused(issued, alice):
    _, content, record = issued
    vc.credentials_revoke(credential=record, user=alice)
    record.refresh_from_db()
    assert record.revoked_at is not None and record.revoked_by == alice
    with pytest.raises(vc.CredentialsRevoked) as caught:
        vc.credentials_verify(content)
    assert "revoked" in str(caught.value)


def test_revoking_one_file_leaves_the_others_valid(deployed_vault, alice):
    _, first, record = vc.credentials_issue(vault=deployed_vault, issued_by=alice)
    _, second, _ = vc.credentials_issue(vault=deployed_vault, issued_by=alice)
    vc.credentials_revoke(credential=record, user=alice)
    with pytest.raises(vc.CredentialsRevoked):
        vc.credentials_verify(first)
    assert vc.credentials_verify(second)


def test_credentials_of_a_deleted_vault_are_refused(issued, deployed_vault, alice):
    from vaults.services import vault_delete

    _, content, _ = issued
    vault_delete(vault=deployed_vault, user=alice)
    with pytest.raises(vc.CredentialsRevoked) as caught:
        vc.credentials_verify(content)
    assert "no longer exist" in str(caught.value)


def test_every_refusal_is_a_credentials_error():
    for cls in (
        vc.CredentialsMalformed,
        vc.CredentialsTampered,
        vc.CredentialsExpired,
        vc.CredentialsRevoked,
        vc.CredentialsForeign,
    ):
        assert issubclass(cls, vc.CredentialsError)


def test_a_vault_still_deploying_has_no_credentials(resource_group, alice):
    vault = make_vault(resource_group, state=Vault.State.DEPLOYING)
    with pytest.raises(ValueError, match="not deployed yet"):
        vc.credentials_issue(vault=vault, issued_by=alice)


def test_status_says_active_expired_or_revoked(issued):
    _, _, record = issued
    now = timezone.now()
    assert record.status(now) == "active"
    assert record.status(record.expires_at) == "expired"
    record.revoked_at = now
    assert record.status(now) == "revoked"


def test_the_download_page_offers_and_explains_one_registration(client, deployed_vault, member):
    from django.urls import reverse

    from portal.models import Role

    client.force_login(member(Role.BACKUP_OPERATOR))
    page = client.get(
        reverse("vaults:backup", args=[deployed_vault.pk]),
        {"workload": "on_premises", "items": "files", "prepare": "1"},
    ).content.decode()
    assert "Limit to one registration" in page
    assert "registers one machine and is then used up" in page
    assert "needs credentials downloaded by a Contributor or Owner" in page
    assert "yours (Backup Operator) register new machines only" in page

    response = client.post(
        reverse("vaults:credentials-download", args=[deployed_vault.pk]),
        {"agent_ready": "on", "single_use": "on"},
    )
    assert response.status_code == 200
    record = vc.credentials_verify(response.content)
    assert record.single_use and record.issued_role == Role.BACKUP_OPERATOR
    assert json.loads(response.content)["credentials"]["single_use"] is True
    listing = client.get(reverse("vaults:credentials", args=[deployed_vault.pk])).content.decode()
    assert "(Backup Operator)" in listing and "<td>One</td>" in listing


def test_a_used_single_use_file_shows_as_used(deployed_vault, alice):
    _, _, record = vc.credentials_issue(vault=deployed_vault, issued_by=alice, single_use=True)
    VaultCredential.objects.filter(pk=record.pk).update(used_at=timezone.now())
    record.refresh_from_db()
    assert record.status(timezone.now()) == "used"
