"""Decline thresholds calibrated on the dataset being trained, when it is trained, and stored with the version.

The cosine floor: below it nothing in the data is about the question and the model is not asked. How close "nothing
to do with us" comes depends on the data: off-topic messages (engine.offtopic) scored up to 0.51 against the lore
sample's index and up to 0.35 against the pebble FAQ's, while a user's "heic support?" scored 0.14 against its own
FAQ pair. So the floor is read off the dataset's own index: the FLOOR_QUANTILE quantile of the off-topic messages'
scores, and never above the score of all but REWRITES_LOST of the training questions rewritten as users type them
(qabot.rewrites). What passes the floor is left to the model, which learnt to decline off-topic messages with its
notes (engine.grounding.build_examples).

The decline confidence is the model's, not the data's: it keeps the default measured on the sample (engine.grounding)
unless a setting overrides it (QABOT_DECLINE_CONFIDENCE). The English-only rules (names, numbers and times) are judged
against the notes' dataset itself each time it changes (Grounding.rules_that_hold).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from engine.grounding import DECLINE_CONFIDENCE, MIN_SCORE
from engine.offtopic import OFF_TOPIC
from engine.retrieval import Embedder, PairIndex
from qabot.dataset import QAPair
from qabot.rewrites import user_rewrites

FLOOR_QUANTILE = 0.75  # a quarter of plain off-topic messages still reach the model, which declines them itself
REWRITES_LOST = 0.01  # the floor may turn away at most this share of users' rewrites of the training questions
REWRITES_ASKED = 400  # rewrites scored at most (a few seconds of embedding)


@dataclass(frozen=True)
class Calibration:
    """Thresholds for one version's declines, and what they were read from."""

    min_score: float = MIN_SCORE
    decline_confidence: float = DECLINE_CONFIDENCE
    offtopic_quantile: float | None = None  # the off-topic messages' FLOOR_QUANTILE score against the index
    rewrites_floor: float | None = None  # the score that all but REWRITES_LOST of the rewrites reach

    def to_meta(self) -> dict[str, float | None]:
        return {k: None if v is None else round(v, 4) for k, v in asdict(self).items()}

    @classmethod
    def from_meta(cls, meta: dict | None) -> Calibration:
        """A version's stored calibration; a version from before calibration keeps the old constants."""
        known = {k: float(v) for k, v in (meta or {}).items() if k in cls.__dataclass_fields__ and v is not None}
        return cls(**known)


def calibrate(pairs: list[QAPair], index: PairIndex, embedder: Embedder, *, seed: int = 0) -> Calibration:
    """The floor for this dataset, from its index: see the module's docstring."""
    if not pairs:
        return Calibration()
    offtopic = index.scores(embedder, list(OFF_TOPIC)).max(dim=1).values
    rewrites = [r.question for r in user_rewrites(pairs, limit=REWRITES_ASKED, seed=seed)]
    answerable = index.scores(embedder, rewrites).max(dim=1).values if rewrites else offtopic.new_ones(1)
    high_offtopic = float(offtopic.quantile(FLOOR_QUANTILE))
    low_answerable = float(answerable.quantile(REWRITES_LOST))
    return Calibration(
        min_score=max(0.0, min(high_offtopic, low_answerable)),
        offtopic_quantile=high_offtopic,
        rewrites_floor=low_answerable,
    )
