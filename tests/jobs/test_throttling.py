"""Machine > Properties > Throttling: saved into the policy (versioned, sent, drift), its
rules on the form, and who may change it (alice owner, bob member, charlie outsider)."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from agents.runtime import protocol
from jobs import policy_rules, services
from jobs.models import BackupPolicy
from portal.models import Role
from tests.jobs.conftest import spec

pytestmark = pytest.mark.django_db

FORM = {
    "enabled": "on",
    "work_days": ["0", "1", "2", "3", "4"],
    "work_start": "9",
    "work_end": "18",
    "work_rate": "1.5",
    "work_unit": "Mbps",
    "off_rate": "512",
    "off_unit": "Kbps",
}
SCHEDULE = {
    "enabled": True,
    "work_days": [0, 1, 2, 3, 4],
    "work_start": 9,
    "work_end": 18,
    "work_kbps": 1500,
    "off_kbps": 512,
}


def url(machine, suffix=""):
    return f"/jobs/machines/{machine.pk}/properties/throttling/{suffix}"


def test_throttling_travels_in_a_new_policy_version_and_the_editor_keeps_it(
    machine, policy, alice, sent
):
    before = policy.spec_hash
    assert "throttle" not in policy.spec()  # a policy never throttled keeps its old hash
    saved = services.policy_throttle_save(machine=machine, throttle=SCHEDULE, user=alice)
    assert saved.version == 2 and saved.spec_hash != before and saved.drifted
    _, task, kwargs = sent[-1]
    assert task == protocol.POLICY_TASK
    assert kwargs["policy"]["throttle"] == SCHEDULE and kwargs["version"] == 2
    assert kwargs["spec_hash"] == policy_rules.spec_hash(kwargs["policy"])
    # Saving the backup policy (whose form knows nothing of throttling) keeps it.
    again = services.policy_save(machine=machine, spec=spec(times=["01:00"]), user=alice)
    assert again.version == 3 and again.throttle == SCHEDULE
    assert sent[-1][2]["policy"]["throttle"] == SCHEDULE
    services.policy_applied(policy=again, version=3, spec_hash=again.spec_hash)
    again.refresh_from_db()
    assert not again.drifted


def test_a_machine_without_a_policy_is_told_to_set_one_first(machine):
    with pytest.raises(ValidationError) as caught:
        services.policy_throttle_save(machine=machine, throttle=SCHEDULE)
    assert "Set a backup policy first" in str(caught.value)


def test_a_schedule_breaking_a_rule_is_refused_in_the_policy_too(machine, policy):
    bad = SCHEDULE | {"off_kbps": 511, "work_end": 9}
    with pytest.raises(ValidationError) as caught:
        services.policy_save(machine=machine, spec=spec(throttle=bad))
    assert set(caught.value.message_dict) == {"off_rate", "work_end"}


def test_the_editor_saves_plain_units_and_shows_the_week_and_drift(client, alice, machine, policy):
    client.force_login(alice)
    page = client.get(url(machine)).content.decode()
    assert "Throttling is off" in page and "machine's local time (Europe/Amsterdam)" in page
    assert client.post(url(machine), FORM).status_code == 302
    policy.refresh_from_db()
    assert policy.throttle == SCHEDULE and policy.version == 2
    page = client.get(url(machine)).content.decode()
    assert 'value="1.5"' in page and ">Mbps</option>" in page
    assert 'data-field="work-rate">1.5 Mbps' in page and 'data-field="off-rate">512 Kbps' in page
    assert page.count('<td class="work"') == 5 * 9 and page.count('<td class="off"') == 168 - 45
    assert "Not applied" in page
    overview = client.get(f"/machines/{machine.pk}/").content.decode()
    assert "1.5 Mbps on Mon, Tue, Wed, Thu, Fri 09:00-18:00, 512 Kbps at other times" in overview
    preview = client.post(url(machine, "preview/"), FORM | {"work_end": "10"}).content.decode()
    assert preview.count('<td class="work"') == 5


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"work_rate": "511", "work_unit": "Kbps"}, "work_rate", "from 512 Kbps to 1,023 Mbps"),
        ({"off_rate": "1024", "off_unit": "Mbps"}, "off_rate", "from 512 Kbps to 1,023 Mbps"),
        ({"off_rate": "fast"}, "off_rate", "Enter a bandwidth"),
        ({"off_rate": "NaN"}, "off_rate", "Enter a bandwidth"),
        ({"off_rate": "1e999999999"}, "off_rate", "Enter a bandwidth"),
        ({"off_rate": "-5"}, "off_rate", "Enter a bandwidth"),
        ({"work_rate": "\u0663"}, "work_rate", "Enter a bandwidth"),  # an Arabic-Indic 3
        ({"work_unit": "Gbps"}, "work_rate", "Enter a bandwidth"),
        ({"work_end": "8"}, "work_end", "end after they start"),
        ({"work_start": "x"}, "work_start", "hour work starts"),
        ({"work_days": ["9"]}, "work_days", "not a day of the week"),
        ({"work_days": []}, "work_days", "at least one work day"),
    ],
)
def test_the_editor_names_each_broken_rule_next_to_its_field(
    client, alice, machine, policy, change, field, message
):
    client.force_login(alice)
    response = client.post(url(machine), FORM | change)
    assert response.status_code == 400
    page = response.content.decode()
    assert f'data-error-for="{field}"' in page and message in page
    policy.refresh_from_db()
    assert policy.throttle == {} and policy.version == 1


def test_readers_and_backup_operators_see_it_but_cannot_change_it(
    client, member, charlie, machine, policy
):
    for role in (Role.READER, Role.BACKUP_OPERATOR):
        client.force_login(member(role))
        page = client.get(url(machine)).content.decode()
        assert (
            "needs the Contributor or Owner role" in page
            and '<fieldset class="throttle-fields" disabled' in page
        )
        assert client.post(url(machine), FORM).status_code == 403
    client.force_login(member(Role.CONTRIBUTOR))
    assert client.post(url(machine), FORM).status_code == 302
    client.force_login(charlie)
    assert client.get(url(machine)).status_code == 404
    assert client.post(url(machine), FORM).status_code == 404
    assert client.post(url(machine, "preview/"), FORM).status_code == 404
    assert BackupPolicy.objects.get(machine=machine).version == 2
