"""The unanswered inbox: questions the bot declined or answered wrongly, kept in Redis for the admins. No torch, no rq.

Redis layout:
- `qabot:inbox:q:<id>` hash: text (as first asked), norm (the key text), count (askings), flags ("wrong" flags),
  first_asked, last_asked (epoch seconds), kind ("declined" or "wrong"), answer (the answer it got, for "wrong"), places (JSON
  [[platform, chat, last asked], ...], newest first, at most MAX_PLACES), state ("open", or "dismissed": kept
  DISMISSED_KEEP_S so that a dismissed question does not come straight back).
- `qabot:inbox:open` sorted set: open records' ids scored by count and flags, then last_asked; when it holds more than the
  inbox size, the lowest (least asked, then least recently asked) goes, record and all, so junk asked once never
  flushes a question asked fifty times.
- `qabot:inbox:chat:<platform>:<chat>` sorted set: the questions a chat raised first; past a tenth of the inbox,
  that chat's oldest one asked only once goes, so one chat cannot fill the inbox.
- `qabot:notify:<platform>`: admins' answers on their way to those chats (qabot.notices).
- `qabot:sent:<platform>:<chat>:<message>` hash {question, answer, reports}: an answer a bot sent, for SENT_TTL_S,
  so that someone can say it was wrong; `qabot:reported:...:<hash of who>` counts each person once.
The id is the first 6 hex digits of the SHA-1 of the normalised question, 2 more for each collision. Updates
run as Lua scripts: two workers recording the same question at once count 2. No user names or ids are stored.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

from qabot.dataset import normalize_question
from qabot.shapes import InboxItem, InboxKind, Place

PREFIX = "qabot:inbox:q:"
OPEN = "qabot:inbox:open"
CHAT_PREFIX = "qabot:inbox:chat:"  # + platform:chat: sorted set of the open questions a chat raised first, by time
PER_CHAT_MIN = 10  # a chat keeps at most a tenth of the inbox (this many at least) of questions only it asked
SENT = "qabot:sent:{}:{}:{}"
REPORTED = "qabot:reported:{}:{}:{}:{}"
MAX_PLACES = 20  # chats remembered per question, the most recent ones
DISMISSED_KEEP_S = 30 * 24 * 3600
SENT_TTL_S = 3 * 24 * 3600  # how long an answer can be flagged as wrong
CHANNEL_PREFIXES = {"tg": "telegram", "dc": "discord"}  # how bots name a chat in an answer job's `channel`

_RECORD = """
local norm, text, now, kind, answer = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local platform, chat, size, max_places, prefix = ARGV[6], ARGV[7], tonumber(ARGV[8]), tonumber(ARGV[9]), ARGV[10]
local full = redis.sha1hex(norm)
local id, key
for n = 6, 40, 2 do
  id = string.sub(full, 1, n)
  key = prefix .. id
  local found = redis.call('HGET', key, 'norm')
  if (not found) or found == norm then break end
  key = nil
end
if not key then return redis.error_reply('no free inbox id') end
local state = redis.call('HGET', key, 'state')
if not state then
  redis.call('HSET', key, 'text', text, 'norm', norm, 'count', 0, 'first_asked', now, 'kind', kind, 'places', '[]',
             'state', 'open')
  state = 'open'
end
local count, flags  -- an asking counts as asked; a "wrong" flag counts as a flag, never as an asking
if kind == 'wrong' then
  flags = redis.call('HINCRBY', key, 'flags', 1)
  count = tonumber(redis.call('HGET', key, 'count'))
else
  count = redis.call('HINCRBY', key, 'count', 1)
  flags = tonumber(redis.call('HGET', key, 'flags') or '0')
end
local total = count + flags
local said = count
if kind == 'wrong' then said = flags end
redis.call('HSET', key, 'last_asked', now)
if state ~= 'open' then return {id, said, state} end
if kind == 'wrong' then redis.call('HSET', key, 'kind', 'wrong', 'answer', answer) end
if platform ~= '' then
  local kept = {{platform, chat, now}}
  for _, p in ipairs(cjson.decode(redis.call('HGET', key, 'places'))) do
    if #kept >= max_places then break end
    if not (p[1] == platform and p[2] == chat) then table.insert(kept, p) end
  end
  redis.call('HSET', key, 'places', cjson.encode(kept))
end
redis.call('ZADD', KEYS[1], total * 1e10 + tonumber(now), id)
if total == 1 and platform ~= '' then  -- a chat's new questions: past per_chat, its oldest asked once goes
  local mine = ARGV[12] .. platform .. ':' .. chat
  redis.call('ZADD', mine, now, id)
  redis.call('EXPIRE', mine, ARGV[13])
  while redis.call('ZCARD', mine) > tonumber(ARGV[11]) do
    local old = redis.call('ZPOPMIN', mine)[1]
    local raised = tonumber(redis.call('HGET', prefix .. old, 'count') or '0')
    raised = raised + tonumber(redis.call('HGET', prefix .. old, 'flags') or '0')
    if raised == 1 and redis.call('HGET', prefix .. old, 'state') == 'open' then
      redis.call('DEL', prefix .. old)
      redis.call('ZREM', KEYS[1], old)
    end
  end
end
while redis.call('ZCARD', KEYS[1]) > size do  -- the least asked, then the least recently asked, goes; never the
  local lowest = redis.call('ZRANGE', KEYS[1], 0, 1)  -- question just asked (it could never count up otherwise)
  local gone = lowest[1]
  if gone == id and lowest[2] then gone = lowest[2] end
  redis.call('ZREM', KEYS[1], gone)
  redis.call('DEL', prefix .. gone)
end
return {id, said, state}
"""

_CLOSE = """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
local key = ARGV[2] .. ARGV[1]
if ARGV[3] == 'dismissed' then
  redis.call('HSET', key, 'state', 'dismissed', 'places', '[]')
  redis.call('EXPIRE', key, ARGV[4])
else
  redis.call('DEL', key)
end
return 1
"""


@dataclass(frozen=True)
class Recorded:
    id: str
    count: int
    open: bool  # False: an admin dismissed this question lately; it was counted, not reopened


def place_of(channel: str | None) -> tuple[str, str] | None:
    """("telegram", "123") from an answer job's channel "tg:123"; None when asked elsewhere (the CLI)."""
    prefix, _, chat = (channel or "").partition(":")
    return (CHANNEL_PREFIXES[prefix], chat) if prefix in CHANNEL_PREFIXES and chat else None


def inbox_id(text: str, length: int = 6) -> str:
    """The id a question gets when no other question holds it (the Lua script lengthens it on a collision)."""
    return hashlib.sha1(normalize_question(text).encode()).hexdigest()[:length]


def record(
    connection: Any,
    text: str,
    *,
    kind: InboxKind = InboxKind.DECLINED,
    answer: str | None = None,
    place: tuple[str, str] | None = None,
    size: int = 500,
    now: float | None = None,
) -> Recorded:
    """Count one asking of `text` (a new record, or the existing one's count + 1); past `size`, drop the least asked
    (then least recently asked) record other than this one, and past a chat's share, that chat's oldest question asked
    once."""
    question = " ".join(text.split())
    platform, chat = place or ("", "")
    args = (normalize_question(question), question, repr(now or time.time()), str(kind), answer or "", platform, chat)
    per_chat = max(PER_CHAT_MIN, size // 10)
    found = connection.eval(_RECORD, 1, OPEN, *args, size, MAX_PLACES, PREFIX, per_chat, CHAT_PREFIX, DISMISSED_KEEP_S)
    return Recorded(_text(found[0]), int(found[1]), _text(found[2]) == "open")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _clean_id(item_id: str) -> str:
    return item_id.strip().lstrip("#").casefold()


def _item(item_id: str, fields: dict[bytes, bytes]) -> InboxItem | None:
    values = {_text(k): _text(v) for k, v in fields.items()}
    if values.get("state") != "open":
        return None
    places = json.loads(values.get("places") or "[]")
    return InboxItem(
        id=item_id,
        text=values["text"],
        count=int(values["count"]),
        flags=int(values.get("flags") or 0),
        first_asked=float(values["first_asked"]),
        last_asked=float(values["last_asked"]),
        kind=InboxKind(values["kind"]),
        answer=values.get("answer") or None,
        places=tuple(Place(p[0], p[1], float(p[2])) for p in places) if isinstance(places, list) else (),
    )


def get(connection: Any, item_id: str) -> InboxItem | None:
    """The open question with this id (any case, a leading # allowed), or None."""
    clean = _clean_id(item_id)
    if not clean or not all(c in "0123456789abcdef" for c in clean):
        return None
    return _item(clean, connection.hgetall(PREFIX + clean))


def open_items(connection: Any, limit: int | None = None) -> tuple[list[InboxItem], int]:
    """The open questions, most asked first, then most recently asked; and how many are open."""
    ids = [_text(i) for i in connection.zrange(OPEN, 0, -1)]
    with connection.pipeline(transaction=False) as pipe:
        for item_id in ids:
            pipe.hgetall(PREFIX + item_id)
        found = pipe.execute()
    items = [item for item_id, fields in zip(ids, found, strict=True) if (item := _item(item_id, fields)) is not None]
    items.sort(key=lambda i: (-i.count, -i.last_asked))
    return (items[:limit] if limit is not None else items), len(items)


def open_count(connection: Any) -> int:
    """How many questions are open, for /status (one Redis call)."""
    return int(connection.zcard(OPEN))


def close(connection: Any, item_id: str, *, dismissed: bool = False) -> bool:
    """Close an open question (answered: removed; dismissed: kept a while, closed); False if it was not open."""
    state = "dismissed" if dismissed else "answered"
    return bool(connection.eval(_CLOSE, 1, OPEN, _clean_id(item_id), PREFIX, state, DISMISSED_KEEP_S))


# -- answers a bot sent, so that people can say one was wrong -------------------------------------
def remember_answer(connection: Any, platform: str, chat: str, messages: list[str], question: str, answer: str) -> None:
    """Remember, for SENT_TTL_S, which question and answer each of these bot messages carried (the parts of a long
    answer name its first message, where its reports are counted)."""
    with connection.pipeline(transaction=False) as pipe:
        for message in messages:
            key = SENT.format(platform, chat, message)
            pipe.hset(key, mapping={"question": question, "answer": answer, "lead": messages[0]})
            pipe.expire(key, SENT_TTL_S)
        pipe.execute()


def recall_answer(connection: Any, platform: str, chat: str, message: str) -> tuple[str, str] | None:
    """(question, answer) of a bot message, or None if it was no answer or is older than SENT_TTL_S."""
    found = connection.hmget(SENT.format(platform, chat, message), ["question", "answer"])
    return (_text(found[0]), _text(found[1])) if found[0] is not None and found[1] is not None else None


def _reporter_key(platform: str, chat: str, message: str, reporter: str) -> str:
    who = hashlib.sha256(f"{platform}:{reporter}".encode()).hexdigest()[:16]
    return REPORTED.format(platform, chat, message, who)


def _lead(connection: Any, platform: str, chat: str, message: str) -> str:
    """The first message of the answer `message` is part of (itself for a one-message answer)."""
    return _text(connection.hget(SENT.format(platform, chat, message), "lead") or message)


def count_report(connection: Any, platform: str, chat: str, message: str, reporter: str) -> int:
    """Which report of this answer this one is (1 for the first), or 0 if this person reported it already, from
    whichever of the answer's messages."""
    message = _lead(connection, platform, chat, message)
    if not connection.set(_reporter_key(platform, chat, message, reporter), 1, nx=True, ex=SENT_TTL_S):
        return 0
    return int(connection.hincrby(SENT.format(platform, chat, message), "reports", 1))


def uncount_report(connection: Any, platform: str, chat: str, message: str, reporter: str) -> None:
    """Take back a report that could not be passed on, so that the person can try again."""
    message = _lead(connection, platform, chat, message)
    if connection.delete(_reporter_key(platform, chat, message, reporter)):
        connection.hincrby(SENT.format(platform, chat, message), "reports", -1)
