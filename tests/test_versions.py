"""Model versions: numbered folders, an atomic `current` pointer, promote and roll back."""

from __future__ import annotations

import pytest

from engine.versions import ModelStore
from qabot.errors import VersionError


def make_version(store: ModelStore, note: str) -> str:
    staging = store.staging_dir()
    (staging / "weights.bin").write_text(note)
    return store.commit(staging, {"note": note}).name


def test_versions_are_numbered_and_only_complete_ones_are_listed(tmp_path):
    store = ModelStore(tmp_path)
    assert store.list() == [] and store.current() is None
    assert [make_version(store, "a"), make_version(store, "b")] == ["v0001", "v0002"]
    store.staging_dir()  # an unfinished save is not a version
    assert [v.name for v in store.list()] == ["v0001", "v0002"]
    assert store.get("v0002").meta["note"] == "b" and store.get("v0002").created_at


def test_promote_and_rollback(tmp_path):
    store = ModelStore(tmp_path)
    for note in "abc":
        store.promote(make_version(store, note))
    assert store.current_name() == "v0003"
    assert store.rollback().name == "v0002" and store.current_name() == "v0002"
    assert store.rollback().name == "v0001"
    with pytest.raises(VersionError, match="nothing to roll back to"):
        store.rollback()
    assert store.rollback("v0003").name == "v0003" and store.current().meta["note"] == "c"


def test_unknown_version_is_a_clear_error_and_changes_nothing(tmp_path):
    store = ModelStore(tmp_path)
    store.promote(make_version(store, "a"))
    with pytest.raises(VersionError, match=r"no model version 'v0042' \(known: v0001\)"):
        store.promote("v0042")
    with pytest.raises(VersionError):
        store.promote("../../etc")
    assert store.current_name() == "v0001"


def test_pointer_switch_leaves_no_temporary_files(tmp_path):
    store = ModelStore(tmp_path)
    for note in "ab":
        store.promote(make_version(store, note))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["current", "history.json", "versions"]


def test_a_number_taken_meanwhile_is_skipped(tmp_path):
    store = ModelStore(tmp_path)
    first = store.staging_dir()
    second = store.staging_dir()
    (second / "w").write_text("b")
    (store.versions_dir / "v0001").mkdir()  # another process claimed v0001 after we looked
    (store.versions_dir / "v0001" / "w").write_text("a")
    assert store.commit(second, {"note": "b"}).name == "v0002"
    (first / "w").write_text("c")
    assert store.commit(first, {"note": "c"}).name == "v0003"
