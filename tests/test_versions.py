"""Model versions: numbered folders, an atomic `current` pointer, promote and roll back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from engine.versions import ModelStore
from qabot.errors import VersionError


def saved_files(folder: Path) -> Path:
    """What a saved model holds, as far as promotion checks: a config and a weights file whose header holds."""
    (folder / "config.json").write_text("{}")
    save_file({"weight": np.zeros((2, 2), dtype=np.float32)}, str(folder / "model.safetensors"))
    return folder


def make_version(store: ModelStore, note: str) -> str:
    staging = saved_files(store.staging_dir())
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
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "current", "history.json", "versions"]


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


def version_with_dataset(store: ModelStore, note: str) -> str:
    from qabot.dataset import QAPair

    digest, path = store.store_dataset([QAPair(f"Question {note}?", f"Answer {note}.")])
    staging = saved_files(store.staging_dir())
    return store.commit(staging, {"note": note, "dataset": {"hash": digest, "path": str(path), "pairs": 1}}).name


def test_retention_keeps_the_live_the_previous_n_and_the_newest_candidate(tmp_path):
    store = ModelStore(tmp_path)
    for note in "abcde":
        store.promote(version_with_dataset(store, note))  # v0001..v0005, each live in turn
    candidate = version_with_dataset(store, "f")  # trained, not promoted
    old_candidate_data = store.get("v0001").meta["dataset"]["path"]
    removed = store.prune(keep_previous=2)
    assert [v.name for v in store.list()] == ["v0003", "v0004", "v0005", candidate]
    assert {"v0001", "v0002"} <= set(removed) and store.current_name() == "v0005"
    assert store.history() == ["v0003", "v0004", "v0005"]
    kept_data = {v.meta["dataset"]["path"] for v in store.list()}
    assert all(__import__("pathlib").Path(p).is_file() for p in kept_data)
    assert not __import__("pathlib").Path(old_candidate_data).exists()  # no kept model names it
    assert store.rollback().name == "v0004"


def test_retention_keeps_the_dataset_of_a_run_still_training(tmp_path):
    """Two runs on one store (`qabot train` beside a queued fine-tune): the one that ends first prunes, and must not
    delete the dataset the other stored and trains on (it is named by no version until that run commits)."""
    import shutil
    import socket
    import subprocess

    from engine.versions import OWNER_FILE
    from qabot.dataset import QAPair

    store = ModelStore(tmp_path)
    store.promote(version_with_dataset(store, "a"))
    training, _ = store.store_dataset([QAPair("Who trains?", "A run that is still going.")])
    run = store.claim_run(f"{training}-0123abcd")  # this process: alive
    abandoned, _ = store.store_dataset([QAPair("Who died?", "A run whose process ended.")])
    dead = subprocess.Popen(["true"])
    dead.wait()
    (store.claim_run(f"{abandoned}-4567cdef") / OWNER_FILE).write_text(f"{socket.gethostname()}-{dead.pid}")
    store.prune(keep_previous=1)
    stored = store.datasets_dir
    assert (stored / f"{training}.json").is_file() and not (stored / f"{abandoned}.json").exists()
    shutil.rmtree(run)  # the run ended without committing
    store.prune(keep_previous=1)
    assert not (stored / f"{training}.json").exists()


def test_staging_of_a_dead_run_is_cleaned_and_a_live_one_kept(tmp_path):
    import subprocess

    store = ModelStore(tmp_path)
    mine = store.staging_dir()  # this process is alive
    dead = subprocess.Popen(["true"])
    dead.wait()
    orphan = store.versions_dir / mine.name.replace(f"-{__import__('os').getpid()}-", f"-{dead.pid}-")
    orphan.mkdir()
    (store.runs_dir / "abc-123" / "checkpoints").mkdir(parents=True)
    removed = store.clean_staging()
    assert orphan.name in removed and not orphan.exists() and mine.exists()
    assert not any(store.runs_dir.iterdir())


def test_concurrent_changes_of_the_dataset_are_never_lost(tmp_path):
    """Eight processes run the /addqa job at once: all eight pairs are kept."""
    import multiprocessing

    from qabot.dataset import QAPair

    store = ModelStore(tmp_path / "models")
    store.set_current_dataset(store.store_dataset([QAPair("Who was here first?", "The seed pair.")])[0])
    with multiprocessing.get_context("spawn").Pool(8) as pool:
        pool.map(_add_one, [(str(tmp_path / "models"), i) for i in range(8)])
    questions = {p.prompt for p in store.current_pairs()}
    assert questions == {"Who was here first?"} | {f"Question {i}?" for i in range(8)}


def _add_one(args: tuple[str, int]) -> None:
    import os
    from pathlib import Path

    from worker.admin import add_pair

    root, i = args
    os.environ["QABOT_HOME"] = str(Path(root).parent)  # the admin job reads its settings from the environment
    result = add_pair(f"Question {i}?", f"Answer {i}.")
    assert result.added, result.problems


def test_a_version_whose_weights_would_not_load_is_never_made_live(tmp_path):
    """Audit finding: promotion switched `current` to damaged weights, and every worker that restarted failed every
    question. Promote and rollback now check the files first, say what is wrong and change nothing."""
    store = ModelStore(tmp_path)
    for note in "ab":
        store.promote(make_version(store, note))
    weights = store.get("v0001").path / "model.safetensors"
    weights.write_bytes(b"\xff" * 8 + weights.read_bytes()[8:])  # "invalid header length" when loaded
    with pytest.raises(VersionError, match=r"v0001 cannot be loaded: model.safetensors is damaged"):
        store.rollback()
    with pytest.raises(VersionError, match="v0001 cannot be loaded"):
        store.promote("v0001")
    assert store.current_name() == "v0002"
    damaged = make_version(store, "c")
    (store.get(damaged).path / "config.json").unlink()
    with pytest.raises(VersionError, match=f"{damaged} cannot be loaded: its config.json is missing"):
        store.promote(damaged)
    assert store.current_name() == "v0002" and store.history() == ["v0001", "v0002"]
