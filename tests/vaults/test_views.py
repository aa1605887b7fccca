"""Vault pages: who may do what (alice owner, bob by role, charlie outsider), and what
each page shows."""

from __future__ import annotations

import json

import pytest
from django.urls import reverse

from portal.models import Role
from tests.vaults.conftest import make_machine, make_vault
from vaults.credentials import credentials_verify
from vaults.models import Vault, VaultCredential

pytestmark = pytest.mark.usefixtures("vault_env")


@pytest.fixture
def as_user(client):
    def sign_in(user):
        client.force_login(user)
        return client

    return sign_in


# --- list -------------------------------------------------------------------------------
def test_the_list_shows_only_visible_vaults(as_user, alice, charlie, resource_group):
    make_vault(resource_group, name="contoso-vault")
    assert "contoso-vault" in as_user(alice).get("/vaults/").content.decode()
    page = as_user(charlie).get("/vaults/").content.decode()
    assert "contoso-vault" not in page and "No Recovery Services vaults" in page


def test_the_list_sorts_and_filters(as_user, alice, resource_group, subscription):
    from portal.models import ResourceGroup

    other_rg = ResourceGroup.objects.create(
        subscription=subscription, name="alpha-rg", location="East US"
    )
    make_vault(resource_group, name="bravo", location="West Europe")
    make_vault(other_rg, name="Alpha", location="East US")
    make_vault(resource_group, name="charlie-v", location="North Europe")
    client = as_user(alice)

    def names(**params):
        response = client.get("/vaults/", params)
        return [v.name for v in response.context["vaults"]]

    assert names() == ["Alpha", "bravo", "charlie-v"]
    assert names(sort="-name") == ["charlie-v", "bravo", "Alpha"]
    assert names(sort="location") == ["Alpha", "charlie-v", "bravo"]
    assert names(sort="resource_group") == ["Alpha", "bravo", "charlie-v"]
    assert names(q="RAV") == ["bravo"]
    assert names(location="East US") == ["Alpha"]
    assert names(resource_group="backup-rg") == ["bravo", "charlie-v"]
    assert names(subscription=str(subscription.pk)) == ["Alpha", "bravo", "charlie-v"]
    assert names(subscription="not-a-uuid") == []


def test_the_list_is_a_fixed_number_of_queries(
    as_user, alice, resource_group, django_assert_max_num_queries
):
    for i in range(20):
        make_vault(resource_group, name=f"v{i:02d}")
    client = as_user(alice)
    with django_assert_max_num_queries(14):
        client.get("/vaults/")


def test_the_list_answers_htmx_with_the_results_only(as_user, alice, resource_group):
    make_vault(resource_group, name="bravo")
    response = as_user(alice).get("/vaults/", {"q": "bra"}, HTTP_HX_REQUEST="true")
    body = response.content.decode()
    assert 'id="vault-results"' in body and "<html" not in body


# --- create wizard ----------------------------------------------------------------------
def wizard(client, **fields):
    data = {
        "step": "basics",
        "subscription": "",
        "resource_group": "",
        "new_resource_group": "",
        "name": "",
        "location": "West Europe",
    }
    data.update(fields)
    return client.post("/vaults/create/", data)


def test_the_wizard_walks_basics_tags_review_create(
    as_user, alice, subscription, resource_group, django_capture_on_commit_callbacks, monkeypatch
):
    monkeypatch.setattr("vaults.tasks.deploy_vault.apply_async", lambda **kw: None)
    client = as_user(alice)
    page = client.get("/vaults/create/").content.decode()
    assert "Project details" in page and "West Europe" in page and "backup-rg" in page
    common = {"subscription": str(subscription.pk), "resource_group": str(resource_group.pk)}
    response = wizard(client, name="prod-vault", action="next", **common)
    assert response.context["step"] == "tags"
    response = wizard(
        client,
        step="tags",
        name="prod-vault",
        action="next",
        tag_name=["env"],
        tag_value=["prod"],
        **common,
    )
    assert response.context["step"] == "review"
    assert "Validation passed" in response.content.decode()
    with django_capture_on_commit_callbacks(execute=True):
        response = wizard(
            client,
            step="review",
            name="prod-vault",
            action="create",
            tag_name=["env"],
            tag_value=["prod"],
            **common,
        )
    vault = Vault.objects.get()
    assert response.status_code == 302 and response.url == f"/vaults/{vault.pk}/deployment/"
    assert vault.tags == {"env": "prod"} and vault.created_by == alice


def test_basics_with_a_bad_name_stay_on_basics_naming_each_rule(as_user, alice, subscription):
    client = as_user(alice)
    response = wizard(
        client,
        subscription=str(subscription.pk),
        resource_group="__new__",
        new_resource_group="rg1",
        name="9 bad",
        action="goto:review",
    )
    assert response.context["step"] == "basics"
    body = response.content.decode()
    assert "must start with a letter" in body and "only letters, digits and hyphens" in body
    assert not Vault.objects.exists()


def test_the_wizard_creates_a_new_resource_group(
    as_user, alice, subscription, monkeypatch, django_capture_on_commit_callbacks
):
    monkeypatch.setattr("vaults.tasks.deploy_vault.apply_async", lambda **kw: None)
    response = wizard(
        as_user(alice),
        step="review",
        subscription=str(subscription.pk),
        resource_group="__new__",
        new_resource_group="new-rg",
        name="v1",
        action="create",
    )
    assert response.status_code == 302
    assert Vault.objects.get().resource_group.name == "new-rg"


@pytest.mark.parametrize("role", [Role.READER, Role.BACKUP_OPERATOR])
def test_members_below_contributor_cannot_create(as_user, member, subscription, role):
    client = as_user(member(role))
    page = client.get("/vaults/create/").content.decode()
    assert "needs the Contributor or Owner role" in page
    response = wizard(
        client,
        step="review",
        subscription=str(subscription.pk),
        resource_group="__new__",
        new_resource_group="rg",
        name="sneaky",
        action="create",
    )
    assert response.status_code == 200 and not Vault.objects.exists()


def test_a_contributor_can_create(as_user, member, subscription, monkeypatch):
    monkeypatch.setattr("vaults.tasks.deploy_vault.apply_async", lambda **kw: None)
    response = wizard(
        as_user(member(Role.CONTRIBUTOR)),
        step="review",
        subscription=str(subscription.pk),
        resource_group="__new__",
        new_resource_group="rg",
        name="bobs",
        action="create",
    )
    assert response.status_code == 302


def test_an_outsider_cannot_create_in_someone_elses_subscription(as_user, charlie, subscription):
    response = wizard(
        as_user(charlie),
        step="review",
        subscription=str(subscription.pk),
        resource_group="__new__",
        new_resource_group="rg",
        name="x1",
        action="create",
    )
    assert response.status_code == 200 and not Vault.objects.exists()


def test_the_live_name_check_names_each_failed_rule(as_user, alice, subscription, resource_group):
    make_vault(resource_group, name="taken")
    client = as_user(alice)
    url = reverse("vaults:check-name")
    body = client.post(url, {"name": "1_", "subscription": subscription.pk}).content.decode()
    assert 'data-rule="start"' in body and 'data-rule="characters"' in body
    assert 'data-rule="length"' not in body
    body = client.post(url, {"name": "TAKEN", "subscription": subscription.pk}).content.decode()
    assert 'data-rule="unique"' in body
    body = client.post(url, {"name": "fresh", "subscription": subscription.pk}).content.decode()
    assert "fresh is available" in body


def test_the_live_check_does_not_reveal_an_outsiders_names(as_user, charlie, resource_group):
    make_vault(resource_group, name="secret")
    body = (
        as_user(charlie)
        .post(
            reverse("vaults:check-name"),
            {"name": "secret", "subscription": resource_group.subscription_id},
        )
        .content.decode()
    )
    assert 'data-rule="unique"' not in body


def test_resource_group_options_follow_the_subscription(
    as_user, alice, subscription, resource_group
):
    body = (
        as_user(alice)
        .get(reverse("vaults:resource-groups"), {"subscription": subscription.pk})
        .content.decode()
    )
    assert "backup-rg" in body and "+ Create new" in body


# --- deployment page --------------------------------------------------------------------
def test_the_deployment_page_watches_the_vault(as_user, alice, resource_group):
    vault = make_vault(resource_group, state=Vault.State.DEPLOYING)
    body = as_user(alice).get(f"/vaults/{vault.pk}/deployment/").content.decode()
    assert "Deployment is in progress" in body
    assert f"?watch=vault:{vault.pk}" in body


def test_retry_needs_contributor(as_user, member, alice, resource_group, monkeypatch):
    monkeypatch.setattr("vaults.tasks.deploy_vault.apply_async", lambda **kw: None)
    vault = make_vault(resource_group, state=Vault.State.FAILED, created_by=alice)
    url = reverse("vaults:retry", args=[vault.pk])
    assert as_user(member(Role.BACKUP_OPERATOR)).post(url).status_code == 403
    assert as_user(alice).post(url).status_code == 302
    vault.refresh_from_db()
    assert vault.state == Vault.State.DEPLOYING


# --- blade pages: read access -----------------------------------------------------------
PAGES = [
    "overview",
    "deployment",
    "properties",
    "backup-configuration",
    "backup",
    "credentials",
    "delete",
]


@pytest.mark.parametrize("page", PAGES)
def test_readers_see_every_page_outsiders_get_404(page, as_user, member, charlie, deployed_vault):
    url = reverse(f"vaults:{page}", args=[deployed_vault.pk])
    assert as_user(member(Role.READER)).get(url).status_code == 200
    assert as_user(charlie).get(url).status_code == 404


def test_anonymous_visitors_are_sent_to_sign_in(client, deployed_vault):
    response = client.get(reverse("vaults:overview", args=[deployed_vault.pk]))
    assert response.status_code == 302 and "/signin/" in response.url


def test_the_overview_shows_essentials_counts_and_chart(as_user, alice, deployed_vault):
    make_machine(deployed_vault)
    body = as_user(alice).get(f"/vaults/{deployed_vault.pk}/").content.decode()
    for text in ("Essentials", "backup-rg", "West Europe", "Contoso", "Geo-redundant", "Created"):
        assert text in body
    assert '<span class="tile-value" id="count-machines">1</span>' in body
    assert '<svg class="usage-chart"' in body


def test_overview_counts_take_other_apps_hooks(deployed_vault, monkeypatch):
    from vaults import selectors

    monkeypatch.setattr(
        selectors,
        "_overview_counters",
        [lambda v: {"protected_items": 2, "jobs_24h": {"failed": 1}, "active_alerts": 3}],
    )
    counts = selectors.vault_overview_counts(deployed_vault)
    assert counts["protected_items"] == 2 and counts["active_alerts"] == 3
    assert counts["jobs_24h"] == {"in_progress": 0, "succeeded": 0, "warning": 0, "failed": 1}


# --- redundancy -------------------------------------------------------------------------
def test_a_contributor_changes_the_redundancy(as_user, member, deployed_vault):
    url = reverse("vaults:backup-configuration", args=[deployed_vault.pk])
    response = as_user(member(Role.CONTRIBUTOR)).post(url, {"redundancy": "lrs"})
    assert response.status_code == 302
    deployed_vault.refresh_from_db()
    assert deployed_vault.redundancy == "lrs"


@pytest.mark.parametrize("role", [Role.READER, Role.BACKUP_OPERATOR])
def test_lower_roles_cannot_change_the_redundancy(as_user, member, deployed_vault, role):
    url = reverse("vaults:backup-configuration", args=[deployed_vault.pk])
    assert as_user(member(role)).post(url, {"redundancy": "lrs"}).status_code == 403
    deployed_vault.refresh_from_db()
    assert deployed_vault.redundancy == "grs"


def test_the_form_is_disabled_with_the_reason_once_protected(as_user, alice, deployed_vault):
    make_machine(deployed_vault)
    url = reverse("vaults:backup-configuration", args=[deployed_vault.pk])
    body = as_user(alice).get(url).content.decode()
    assert 'id="redundancy-locked"' in body and "1 registered machine" in body
    assert '<fieldset class="option-cards" disabled>' in body
    response = as_user(alice).post(url, {"redundancy": "lrs"})
    assert "1 registered machine" in response.content.decode()
    deployed_vault.refresh_from_db()
    assert deployed_vault.redundancy == "grs"


def test_the_configuration_page_shows_the_advice(as_user, alice, deployed_vault):
    url = reverse("vaults:backup-configuration", args=[deployed_vault.pk])
    body = as_user(alice).get(url).content.decode()
    assert "Geo-redundant" in body and "Locally-redundant" in body and "Zone-redundant" in body
    assert "primary backup copy" in body
    assert 'value="zrs" disabled' in body and "unavailable-zrs" in body  # no zones here


def test_without_a_secondary_geo_is_disabled_with_the_reason_and_nothing_is_copied(
    as_user, alice, deployed_vault, settings
):
    from vaults.models import Vault

    Vault.objects.filter(pk=deployed_vault.pk).update(redundancy="lrs", secondary_container="")
    settings.SECONDARY_STORAGE_DIR = None
    settings.SECONDARY_STORAGE_CONNECTION_STRING = None
    url = reverse("vaults:backup-configuration", args=[deployed_vault.pk])
    body = as_user(alice).get(url).content.decode()
    assert 'value="grs" disabled' in body and "No secondary storage" in body
    Vault.objects.filter(pk=deployed_vault.pk).update(redundancy="grs")
    overview = as_user(alice).get(reverse("vaults:overview", args=[deployed_vault.pk]))
    assert 'id="replication-off"' in overview.content.decode()
    assert "Nothing is being copied" in overview.content.decode()


# --- prepare infrastructure and credentials ---------------------------------------------
def test_prepare_infrastructure_links_the_agent_and_gates_credentials(
    as_user, alice, deployed_vault
):
    url = reverse("vaults:backup", args=[deployed_vault.pk])
    body = (
        as_user(alice)
        .get(url, {"workload": "on_premises", "items": ["files"], "prepare": "1"})
        .content.decode()
    )
    assert "Prepare infrastructure" in body
    assert 'href="/machines/agent/installer/"' in body
    assert "Already downloaded or using the latest Haven agent" in body
    assert 'id="download-credentials" disabled' in body


def test_system_state_is_offered_beside_files_and_says_where_it_is_turned_on(
    as_user, alice, deployed_vault
):
    url = reverse("vaults:backup", args=[deployed_vault.pk])
    goal = as_user(alice).get(url).content.decode()
    assert 'value="files"' in goal and 'value="system_state"' in goal
    body = (
        as_user(alice)
        .get(url, {"workload": "on_premises", "items": ["system_state"], "prepare": "1"})
        .content.decode()
    )
    assert 'id="prepare"' in body
    assert "Protect the System State of a Linux machine" in body
    assert "open the machine's Backup policy and check <strong>System State</strong>" in body
    # an item the agent does not back up prepares nothing
    body = as_user(alice).get(url, {"items": ["volume"], "prepare": "1"}).content.decode()
    assert "Choose at least one thing to back up." in body and 'id="prepare"' not in body


def test_prepare_needs_something_to_back_up(as_user, alice, deployed_vault):
    url = reverse("vaults:backup", args=[deployed_vault.pk])
    body = as_user(alice).get(url, {"workload": "on_premises", "prepare": "1"}).content.decode()
    assert "Choose at least one thing to back up." in body and 'id="prepare"' not in body


def test_azure_vm_workloads_get_the_agent_advice(as_user, alice, deployed_vault):
    url = reverse("vaults:backup", args=[deployed_vault.pk])
    body = (
        as_user(alice)
        .get(url, {"workload": "azure_vm", "items": "files", "prepare": "1"})
        .content.decode()
    )
    assert "install the agent inside the VM" in body


def test_downloading_credentials_needs_the_agent_checkbox(as_user, alice, deployed_vault):
    url = reverse("vaults:credentials-download", args=[deployed_vault.pk])
    response = as_user(alice).post(url, {})
    assert response.status_code == 302 and not VaultCredential.objects.exists()


@pytest.mark.parametrize(
    "role,allowed",
    [(Role.READER, False), (Role.BACKUP_OPERATOR, True), (Role.CONTRIBUTOR, True)],
)
def test_credentials_download_needs_backup_operator(as_user, member, deployed_vault, role, allowed):
    url = reverse("vaults:credentials-download", args=[deployed_vault.pk])
    response = as_user(member(role)).post(url, {"agent_ready": "on"})
    if not allowed:
        assert response.status_code == 403
        return
    assert response.status_code == 200
    disposition = response["Content-Disposition"]
    assert disposition.startswith('attachment; filename="vault-one_')
    assert disposition.endswith('.VaultCredentials"')
    record = credentials_verify(response.content)
    assert record.vault == deployed_vault and record.issued_by.username == "bob"
    assert json.loads(response.content)["credentials"]["vault_name"] == "vault-one"


def test_outsiders_cannot_download_credentials(as_user, charlie, deployed_vault):
    url = reverse("vaults:credentials-download", args=[deployed_vault.pk])
    assert as_user(charlie).post(url, {"agent_ready": "on"}).status_code == 404


def test_the_credentials_page_lists_and_revokes(as_user, alice, member, deployed_vault):
    from vaults.credentials import credentials_issue

    _, _, record = credentials_issue(vault=deployed_vault, issued_by=alice)
    body = (
        as_user(alice).get(reverse("vaults:credentials", args=[deployed_vault.pk])).content.decode()
    )
    assert str(record.pk)[:8] in body and "Active" in body and "Revoke" in body
    revoke = reverse("vaults:credentials-revoke", args=[deployed_vault.pk, record.pk])
    assert as_user(member(Role.READER)).post(revoke).status_code == 403
    assert as_user(member(Role.BACKUP_OPERATOR)).post(revoke).status_code == 302
    record.refresh_from_db()
    assert record.revoked_at is not None


# --- delete -----------------------------------------------------------------------------
def test_delete_lists_blockers(as_user, alice, deployed_vault):
    make_machine(deployed_vault)
    url = reverse("vaults:delete", args=[deployed_vault.pk])
    body = as_user(alice).get(url).content.decode()
    assert "1 registered machine" in body and "cannot be deleted yet" in body
    response = as_user(alice).post(url, {"confirm_name": "vault-one"})
    assert response.status_code == 400 and Vault.objects.exists()


def test_delete_needs_the_name_typed(as_user, alice, deployed_vault):
    url = reverse("vaults:delete", args=[deployed_vault.pk])
    assert as_user(alice).post(url, {"confirm_name": "nope"}).status_code == 400
    response = as_user(alice).post(url, {"confirm_name": "vault-one"})
    assert response.status_code == 302 and not Vault.objects.exists()


@pytest.mark.parametrize("role", [Role.READER, Role.BACKUP_OPERATOR])
def test_delete_needs_contributor(as_user, member, deployed_vault, role):
    url = reverse("vaults:delete", args=[deployed_vault.pk])
    assert as_user(member(role)).post(url, {"confirm_name": "vault-one"}).status_code == 403
    assert Vault.objects.exists()


def test_outsiders_cannot_delete(as_user, charlie, deployed_vault):
    url = reverse("vaults:delete", args=[deployed_vault.pk])
    assert as_user(charlie).post(url, {"confirm_name": "vault-one"}).status_code == 404


# --- live ---------------------------------------------------------------------------------
def test_pages_may_watch_only_vaults_their_user_can_read(alice, charlie, deployed_vault):
    from portal.live import _resolvers

    resolver = _resolvers["vault"]
    assert resolver(alice, str(deployed_vault.pk)) == f"vault.{deployed_vault.pk}"
    with pytest.raises(Exception):  # noqa: B017 - Http404; the socket leaves it out
        resolver(charlie, str(deployed_vault.pk))
