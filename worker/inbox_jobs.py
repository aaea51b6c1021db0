"""The unanswered inbox's admin jobs (/unanswered, /answer, /dismiss, a "wrong" flag), served by `qabot worker admin`.

Questions are grouped by worker.lookup (the same question in other words); an answer becomes a pair through
worker.admin's /addqa path.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace

from qabot import inbox, notices
from qabot.settings import Settings
from qabot.shapes import (
    InboxAnswerRequest,
    InboxAnswerResult,
    InboxDismissRequest,
    InboxDismissResult,
    InboxItem,
    InboxKind,
    InboxListRequest,
    InboxListResult,
    WrongReport,
    WrongReportResult,
)
from worker.admin import add_pair_as, admin_store

logger = logging.getLogger(__name__)

PLATFORMS_NOTIFIED = ("telegram", "discord")
INBOX_LIST_MAX = 50


def _redis(settings: Settings):
    """The admin worker's own Redis connection inside a job; a new one when called directly."""
    from rq import get_current_job

    from worker.results import connect

    job = get_current_job()
    return job.connection if job is not None else connect(settings.redis_url, socket_timeout=30)


def _groups(connection, settings: Settings) -> list[InboxItem]:
    """The open questions grouped (worker.lookup: the same question in other words), most asked group first, then the
    most recently asked; each group is its lead item with the others in `also`."""
    from worker.lookup import current_index, group, live_embedder, same_question_threshold

    items, _ = inbox.open_items(connection)
    if not items:
        return []
    store = admin_store(settings)
    embedder = live_embedder(store)
    groups = group(items, same_question_threshold(current_index(store, embedder)), embedder)
    leads = [replace(g[0], also=tuple(g[1:])) for g in groups]
    leads.sort(key=lambda i: (-(i.asked + i.flagged), -max(m.last_asked for m in (i, *i.also))))
    return leads


def _group_of(connection, settings: Settings, item_id: str) -> InboxItem | None:
    """The open group an id belongs to (as the lead or one of its wordings), led by the item that id names."""
    item = inbox.get(connection, item_id)
    if item is None:
        return None
    for lead in _groups(connection, settings):
        members = (lead, *lead.also)
        if any(m.id == item.id for m in members):
            return replace(item, also=tuple(m for m in members if m.id != item.id))
    return item


def inbox_list(request: InboxListRequest) -> InboxListResult:
    """/unanswered: one page of the open questions, the same question in other words grouped; most asked first."""
    settings = Settings()
    connection = _redis(settings)
    leads = _groups(connection, settings)
    size = max(1, min(request.limit, INBOX_LIST_MAX))
    pages = max(1, -(-len(leads) // size))
    page = max(1, min(request.page, pages))
    shown = leads[(page - 1) * size : page * size]
    return InboxListResult(tuple(shown), sum(1 + len(i.also) for i in leads), page, pages)


def inbox_answer(request: InboxAnswerRequest) -> InboxAnswerResult:
    """/answer: the question and the answer become a pair (validated and stored like /addqa), the question and its
    other wordings are closed, and the answer goes to the chats where any of them was asked within
    `inbox_notify_days`."""
    settings = Settings()
    connection = _redis(settings)
    item = _group_of(connection, settings, request.id)
    if item is None:
        return InboxAnswerResult(request.id, False)
    added = add_pair_as(settings, item.text, request.answer.strip(), "answer")
    if not added.added:
        return InboxAnswerResult(item.id, True, item.text, added)
    closed = [m for m in (item, *item.also) if inbox.close(connection, m.id)]  # one closed meanwhile: its closer told them
    days = settings.inbox_notify_days
    since = time.time() - days * 24 * 3600
    places = [p for m in closed for p in m.places if p.platform in PLATFORMS_NOTIFIED and p.at >= since] if days else []
    places = list({(p.platform, p.chat): p for p in places}.values())  # a chat that asked two wordings hears it once
    notices.push_notices(connection, added.question, request.answer.strip(), places)
    logger.info("inbox question %s answered (%d wordings); %d chats to tell", item.id, len(closed), len(places))
    grouped = max(0, len(closed) - 1)  # none closed here: an eviction or another admin took them meanwhile
    return InboxAnswerResult(item.id, True, added.question, added, tuple(places), grouped=grouped)


def inbox_dismiss(request: InboxDismissRequest) -> InboxDismissResult:
    """/dismiss: close the question and its other wordings without an answer (they do not come back for a while)."""
    settings = Settings()
    connection = _redis(settings)
    item = _group_of(connection, settings, request.id)
    if item is None:
        return InboxDismissResult(request.id, False)
    closed = [m for m in (item, *item.also) if inbox.close(connection, m.id, dismissed=True)]
    if not closed:
        return InboxDismissResult(request.id, False)
    return InboxDismissResult(item.id, True, item.text, grouped=len(closed) - 1)


def inbox_report(report: WrongReport) -> WrongReportResult:
    """Someone said an answer was wrong: the question goes to the inbox with the answer it got."""
    settings = Settings()
    recorded = inbox.record(
        _redis(settings),
        report.question,
        kind=InboxKind.WRONG,
        answer=report.answer,
        place=(report.platform, report.chat),
        size=settings.inbox_size,
    )
    return WrongReportResult(recorded.id, recorded.count, recorded.open)
