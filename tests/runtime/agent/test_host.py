"""The OS the agent reports (agents.runtime.host): a name a person reads."""

from __future__ import annotations

from agents.runtime import host


def test_on_linux_it_says_the_distribution_os_release_names():
    release = {"NAME": "Debian GNU/Linux", "PRETTY_NAME": "Debian GNU/Linux 12 (bookworm)"}
    assert host.os_name(system=lambda: "Linux", os_release=lambda: release) == (
        "Debian GNU/Linux 12 (bookworm)"
    )


def test_without_a_pretty_name_it_says_the_name_and_version():
    release = {"NAME": "Alpine Linux", "VERSION": "3.19"}
    assert host.os_name(system=lambda: "Linux", os_release=lambda: release) == "Alpine Linux 3.19"


def test_without_os_release_it_says_the_kernel_and_its_release():
    named = host.os_name(system=lambda: "Linux", os_release=lambda: {})
    assert named.startswith("Linux ") and "-with-" not in named


def test_this_host_is_named_as_its_os_release_says():
    from pathlib import Path

    from agents.runtime.sysstate import os_release

    pretty = os_release(Path("/etc/os-release")).get("PRETTY_NAME")
    if pretty:
        assert host.os_name() == pretty
