"""Checks of a grounded model's answer against its question and its notes, after it is generated.

Each returns why the answer must not be shown (it is shown as a decline instead), or None.

- An answer kind: "how many / much / old / ...", "what year" need a number, "when" a time, "what colour" a colour.
  Asked an unknown fact of a known entity, a grounded model copies another fact of the same entity ("How old is the
  queen?" -> "The queen lives in the palace."). English only: `Grounding.rules_that_hold` turns a kind off where the
  data's own answers break it.
- An empty answer, or one of function words only ("It is."), says nothing.
- Neither of these two applies to an answer that is one of its notes whole: the data's own answer ("No.", "Free." to
  "Is it free or paid?") is what its writer meant, however short.
- An echo: the answer only restates its question ("Why is Port Callow well known?" -> "Port Callow well known.";
  "Who is Queen Ysolde's daughter?" -> "Queen Ysolde's daughter is Queen Ysolde's daughter."): every content word of
  the answer is a word of the question.
- An unsupported answer: it states what none of its notes says. A grounded model learnt to copy its notes, so a right
  answer's words are the notes' words (and the question's); one whose new words are mostly in no note is made up.
  Judged on content words (FUNCTION_WORDS dropped, which are English: in another language fewer words are dropped,
  so the check only gets more lenient there).
"""

from __future__ import annotations

import re

_NUMBER = (
    r"\d|\b(?:one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|thirteen|fourteen|fifteen|sixteen|seventeen|"
    r"eighteen|nineteen|twenty|thirty|forty|fifty|sixty|seventy|eighty|ninety|hundreds?|thousands?|millions?|billions?|"
    r"dozens?|score|half|twice|thrice|once|single|couple|pair|several|few|none|no one|nobody)\b"
)
_TIME = (
    _NUMBER + r"|\b(?:years?|centur(?:y|ies)|ages?|eras?|ago|since|until|till|after|before|during|when|while|first|last|"
    r"spring|summer|autumn|fall|winter|dawn|dusk|midnight|noon|morning|evening|night|days?|weeks?|months?|seasons?|"
    r"january|february|march|april|may|june|july|august|september|october|november|december|"
    r"yesterday|today|tomorrow|now|never|always|every|each|reign|birth|death|war)\b"
)
_COLOUR = (
    r"\b(?:colou?r\w*|hues?|shades?|tint\w*|red(?:dish|der)?|orange|yellow\w*|green\w*|blue\w*|indigo|violet|purple|pink\w*|"
    r"brown|black|white|gr[ae]y\w*|silver\w*|gold\w*|amber|crimson|scarlet|azure|emerald|jade|ivory|bronze|copper\w*|"
    r"teal|turquoise|cyan|magenta|maroon|navy|beige|tan|ruby|sapphire|opal\w*|pale|dark\w*|bright|pearl\w*|"
    r"rust\w*|ash(?:en)?|ochre|cream|lilac|lavender|rose|rosy|blood|snow|jet|ebony|obsidian|sable|charcoal)\b"
)
# A question of these kinds asks for a number, a time or a colour: an answer without one answers another question (the
# model copied a note about the same thing: "How old is the queen?" -> "The queen lives in the palace."; "What colour
# are the dragon's scales?" -> "The dragon has slept for 800 years."). English only. Colour words are matched leniently
# (shades, gems, metals, "dark", any word of "colour"): a miss only lets an answer through.
ANSWER_KINDS = (
    (
        re.compile(r"^(?:how\s+(?:many|much|old|long|tall|far|deep|high|heavy)|(?:in\s+)?what\s+(?:year|age))\b", re.I),
        re.compile(_NUMBER, re.I),
        "number",
    ),
    (re.compile(r"^(?:when|in\s+which\s+year)\b", re.I), re.compile(_TIME, re.I), "time"),
    (
        re.compile(r"^(?:what|which)(?:'s|\s+is|\s+are|\s+was|\s+were)?\s+(?:the\s+)?colou?rs?\b", re.I),
        re.compile(_COLOUR, re.I),
        "colour",
    ),
)

# Words that carry no content of their own: dropped before comparing an answer with its question and notes.
FUNCTION_WORDS = frozenset(
    "a an the is are was were be been being am do does did done has have had having it its it's this that these those "
    "there here of in on at to for from by with as and or but if then so than too very can could would should will "
    "shall may might must i me my we our us you your he him his she her they them their what which who whom whose how "
    "when where why not no nor also just only about into over under again more most some any each such own same "
    "called known".split()
)
SUPPORTED = 0.5  # share of an answer's new content words that must stand in its notes
_TOKEN = re.compile(r"\w[\w'’-]*")


def content_words(text: str) -> set[str]:
    """The content words of a text, casefolded, possessives dropped."""
    found = set()
    for token in _TOKEN.findall(text.casefold()):
        token = re.sub(r"['’]s?$", "", token)
        if token and token not in FUNCTION_WORDS:
            found.add(token)
    return found


def _folded(text: str) -> str:
    return " ".join(text.split()).casefold()


def echo_reason(question: str, answer: str, notes: list[str]) -> str | None:
    """Why the answer is an echo of its question or states what none of its notes says; None if neither."""
    if _folded(answer) in {_folded(note) for note in notes}:
        return None  # the data's own answer, word for word
    said, asked = content_words(answer), content_words(question)
    if not said:
        return "the answer says nothing"
    if said <= asked:
        return "the answer only restates the question"
    new = said - asked
    if new and notes:
        known = set().union(*(content_words(note) for note in notes))
        if sum(word in known for word in new) / len(new) < SUPPORTED:
            return "the answer states what none of its notes says"
    return None
