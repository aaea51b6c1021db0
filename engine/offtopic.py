"""Messages no community's dataset is about, as people send them to a bot: the negatives that calibrate declines; and
complaints about what a dataset is about (`complaints`), which no dataset answers either.

Scored against a dataset's own index when it is trained, they show how close "nothing to do with us" comes to that
dataset's questions (engine.calibration), and a question nearer one of them than to anything in the data is declined
(engine.grounding.Grounding.reason_to_decline). Chit-chat, general knowledge, errands, other software, insults; mostly
English, some in other languages; lower case, fragments and typos as people type. None of them may be a question the bot
is measured on: each stays below 0.7 cosine (the retrieval embedder) of every question of data/ and bench/fresh/
(tests/test_calibration.py checks it). Until 2026-12-04, 16 of them were such questions or close to them ("who painted
the mona lisa", "what is the speed of light", "my wifi router keeps dropping, help"), which taught the bot the answers
it was then scored on; they were replaced by messages of the same kinds. On 2026-12-05 two more were replaced ("how's
it going", "how many bones are in the human body"), as close to messages of two new sets written by someone who saw none
of these.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from collections.abc import Iterable
from typing import Any

from engine.lexical import word_key, words
from qabot.dataset import QAPair
from qabot.rewrites import FUNCTION_WORDS

OFF_TOPIC: tuple[str, ...] = (
    # chit-chat
    "hiya bot",
    "hey bot",
    "morning folks",
    "what are you up to",
    "what's up",
    "are you a real person?",
    "do you have feelings",
    "tell me a joke",
    "i'm bored",
    "thanks a lot!",
    "alright then",
    "that's hilarious",
    "what is your favourite colour",
    "can you sing a song",
    "who made you?",
    "are you smarter than chatgpt",
    "goodnight",
    "brb",
    "what's the meaning of life",
    "do you dream",
    # general knowledge and other topics
    "which is the longest river in africa",
    "how tall is mount everest",
    "who won the world cup in 2010",
    "how many hearts does an octopus have",
    "explain quantum entanglement simply",
    "how many moons does jupiter have",
    "who composed the four seasons",
    "what year did the titanic sink",
    "how do vaccines work",
    "any tips for learning the guitar?",
    "how far is the moon from earth",
    "why is the sky blue",
    "how do i make fresh pasta",
    "recipe for pancakes pls",
    "how do i cook rice properly",
    "what should i name my cat",
    "is coffee bad for you",
    "how do i lose weight fast",
    "what's a good movie to watch tonight",
    "recommend me a fantasy book",
    "how does the stock market work",
    "should i buy bitcoin",
    "what's the exchange rate euro to dollar",
    "how do i clean my keyboard",
    "how to tie a tie",
    "how do you say cheers in german",
    "what is 17 times 23",
    "solve x^2 - 4 = 0",
    "who is the president of france",
    "when is the next solar eclipse",
    # errands and other services
    "book me a table for two at 8pm",
    "order a pizza",
    "can you book a flight to madrid",
    "will it rain this weekend",
    "set an alarm for 7am",
    "remind me to call mum",
    "where is the nearest pharmacy",
    "track my parcel",
    "how do i cancel my phone contract",
    "my printer says offline, help",
    "how do i reset my iphone",
    "how do i connect a second monitor",
    "excel formula for vlookup",
    "can you do my chemistry homework",
    "give me the lottery numbers",
    # insults and spam
    "you are so slow",
    "this bot is garbage",
    "stop talking",
    "stupid bot lol",
    "nobody asked you",
    "buy cheap followers at my site",
    "free crypto giveaway click here",
    # other languages
    "wie spät ist es?",
    "wie wird das wetter morgen",
    "quelle est la capitale de l'italie",
    "tu peux me raconter une blague",
    "¿dónde está la estación de tren?",
    "¿cuál es tu comida favorita?",
    "che ore sono?",
    "mi consigli un buon ristorante",
    "qual é o melhor time de futebol",
    "hoe laat is het",
)


# Complaints that name what a dataset is about ("<product> is trash", "this server sucks"), as people post them in a
# community's chat. They share the data's own word, so they score like a question about it: they pass the floor and are
# nearer the data than any message above, and the model, reading notes about that subject, answered them (reverb 3 of 3,
# club 1 of 1, tidepool 2 of 2 in bench/fresh/). A dataset's complaints are these with its subjects (`subjects`) in
# place of {}; English, like the name rule, and used only where it holds (engine.grounding).
COMPLAINTS: tuple[str, ...] = (
    "{} sucks",
    "{} is garbage",
    "{} is a joke",
    "i hate {}",
    "{} is a waste of money",
    "stupid {} lol",
    "worst {} ever",
    "{} is a scam",
)
_LINK = re.compile(r"\S*https?://\S+|\S+\.(?:com|org|net|io|example)\S*")
# Words a dataset uses everywhere that are nobody's subject ("not", "have"): the function words and a few more.
_NOT_SUBJECTS = FUNCTION_WORDS | frozenset("not no yes have has had any all one more also just only get use used".split())


def subjects(pairs: list[QAPair], common: set[str]) -> list[str]:
    """What a dataset is about, as its users would name it: the word the most pairs use (links left out; 3 letters or
    more, no function word), and its most used name (a word outside `common`, the embedder's English vocabulary) when
    at least half as many pairs use that. "pebble" for the pebble FAQ, "eldoria" for the lore sample, "course" for an
    online course's FAQ, "server" and "lanternmoor" (its spawn city) for a game server's."""
    used: Counter[str] = Counter()
    for pair in pairs:
        text = _LINK.sub(" ", f"{pair.prompt} {pair.response}")
        used.update({word_key(w) for w in words(text)})
    ranked = sorted(  # ties by the word itself: the same subjects in every process (sets iterate by hash)
        ((w, n) for w, n in used.items() if len(w) >= 3 and w.isalpha() and w not in _NOT_SUBJECTS and n >= 2),
        key=lambda found: (-found[1], found[0]),
    )
    if not ranked:
        return []
    top, count = ranked[0]
    name = next((w for w, n in ranked if w not in common and n * 2 >= count), top)
    return [top] if name == top else [top, name]


def complaints(about: Iterable[str]) -> list[str]:
    """A dataset's complaints: COMPLAINTS about each of its subjects (`subjects`)."""
    return [template.format(subject) for subject in about for template in COMPLAINTS]


@functools.cache
def _vectors(embedder: Any) -> Any:
    return embedder.encode(list(OFF_TOPIC))


def offtopic_closeness(embedder: Any, questions: list[str], encoded: Any = None) -> list[float]:
    """Each question's cosine similarity to the nearest of the off-topic messages (embedded once per embedder).
    `encoded`: the questions as `embedder.encode` gave them, when the caller has them already."""
    if not questions:
        return []
    encoded = embedder.encode(questions) if encoded is None else encoded
    return (encoded @ _vectors(embedder).T).max(dim=1).values.tolist()
