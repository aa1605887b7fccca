"""Listing, find and file versions across recovery points."""

from __future__ import annotations

import os

from agents.runtime.engine import file_versions, find, list_dir, list_recovery_points
from tests.runtime.engine.helpers import backup


def test_list_dir_shows_the_children_of_a_folder(repo, source):
    backup(repo, source)
    names = [e.name for e in list_dir(repo, recovery_point="latest", path=str(source))]
    assert names == [b"empty", b"emptydir", b"link", b"random.bin", b"sub", b"text.txt"]
    kinds = {e.name: e.kind_name for e in list_dir(repo, recovery_point="latest", path=str(source))}
    assert kinds[b"sub"] == "dir" and kinds[b"link"] == "symlink" and kinds[b"empty"] == "file"
    sub = list_dir(repo, recovery_point="latest", path=str(source / "sub"))
    assert [e.name for e in sub] == [b"a.dat", b"deeper"]


def test_list_dir_walks_down_from_the_root(repo, source):
    backup(repo, source)
    top = list_dir(repo, recovery_point="latest", path="/")
    assert [e.path for e in top] == [b"/" + os.fsencode(source).split(b"/")[1]]


def test_find_matches_names_across_recovery_points(repo, source):
    backup(repo, source)
    (source / "new.dat").write_text("x")
    backup(repo, source)
    hits = list(find(repo, pattern="*.dat"))
    assert [(h.entry.name, h.recovery_point) for h in hits] == [
        (b"a.dat", list_recovery_points(repo)[0].id),
        (b"new.dat", list_recovery_points(repo)[1].id),  # tree order: src/new.dat < src/sub/
        (b"a.dat", list_recovery_points(repo)[1].id),
    ]
    assert [h.entry.name for h in find(repo, pattern=f"{source}/sub/*")] == [
        b"a.dat",
        b"deeper",
    ] * 2


def test_file_versions_lists_each_recovery_point_and_marks_changes(repo, source):
    path = source / "text.txt"
    backup(repo, source)
    backup(repo, source)
    path.write_text("changed")
    backup(repo, source)
    versions = file_versions(repo, path=str(path))
    assert len(versions) == 3
    assert [v.changed for v in versions] == [True, False, True]
    assert versions[2].entry.size == 7
