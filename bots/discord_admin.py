"""Discord's admin slash commands (/retrain, /addqa, /export, /find, /forget, /undo, /status, /models, /rollback, the
inbox): each refuses everyone but the admins, is deferred, asks the core and answers in a follow-up; a reply that quotes
people is seen by the admin alone."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Literal

import discord
from discord import app_commands

from bots.commands import BY_NAME
from bots.core import REFUSAL, RetrainOutcome
from bots.discord_delivery import MESSAGE_LIMIT, NO_MENTIONS, reply_to, send_followup
from bots.split import split_message

if TYPE_CHECKING:
    from bots.discord_bot import QabotDiscord

# Admin commands are hidden from members without Manage Server (they may be shown to others per server, in Server
# Settings > Integrations); the bot still checks admins itself (QABOT_DISCORD_ADMINS, QABOT_DISCORD_ADMIN_ROLES).
ATTACHMENT_LIMIT = 10 * 1024 * 1024  # what any server accepts from a bot (boosted servers take more)
ADMINS_SEE = app_commands.default_permissions(manage_guild=True)


def _file(outcome: RetrainOutcome) -> dict:
    return {"file": discord.File(io.BytesIO(outcome.image), "loss.png")} if outcome.image is not None else {}


def register_admin(bot: QabotDiscord) -> None:
    """Add the admin commands to the bot's command tree."""
    tree = bot.tree

    async def refuse_unless_admin(interaction: discord.Interaction) -> bool:
        if bot.is_admin(interaction.user):
            return False
        await interaction.response.send_message(REFUSAL, ephemeral=True, allowed_mentions=NO_MENTIONS)
        return True

    async def admin_reply(interaction: discord.Interaction, reply: Callable[[], Awaitable[str]], private: bool = False) -> None:
        """An admin command that answers in text: refused to others, else deferred ("thinking"), then the reply;
        `private` (replies that quote people: the inbox, the data) is seen by the admin alone (ephemeral)."""
        if await refuse_unless_admin(interaction):
            return
        await interaction.response.defer(thinking=True, ephemeral=private)
        await send_followup(interaction, await reply(), ephemeral=private)

    @tree.command(name="retrain", description=BY_NAME["retrain"].help)
    @ADMINS_SEE
    @app_commands.describe(
        dataset="A JSON array or JSON Lines file of {prompt, response}",
        mode="add (default): the file's pairs join the dataset; replace: train on the file alone",
        force="Make the new model live even if it scores lower than the live one",
    )
    async def retrain(
        interaction: discord.Interaction,
        dataset: discord.Attachment | None = None,
        mode: Literal["add", "replace"] = "add",
        force: bool = False,
    ) -> None:
        """Validate the upload, train, keep one progress message up to date, post the result."""
        if await refuse_unless_admin(interaction):
            return
        await interaction.response.defer(thinking=True)
        upload = None
        if dataset is not None:
            if dataset.size > bot.settings.upload_max_bytes:
                await send_followup(
                    interaction, f"{dataset.filename} is {dataset.size} bytes; the limit is {bot.settings.upload_max_bytes}."
                )
                return
            upload = (await dataset.read(), dataset.filename)

        # Interaction tokens expire after 15 minutes and fine-tunes may last longer: the first message is
        # the follow-up that ends "thinking"; progress and the result then go to the channel.
        channel = interaction.channel
        acked = False

        async def say(text: str, **extra) -> discord.Message | discord.WebhookMessage:
            nonlocal acked
            if acked and channel is not None:
                return await channel.send(text, allowed_mentions=NO_MENTIONS, **extra)
            acked = True
            return await interaction.followup.send(text, wait=True, allowed_mentions=NO_MENTIONS, **extra)

        async def edit(handle: discord.Message | discord.WebhookMessage, text: str) -> None:
            with contextlib.suppress(discord.HTTPException):
                await handle.edit(content=text)

        what = f"with {dataset.filename} ({mode})" if dataset is not None else "on the current dataset"

        async def start(text: str) -> discord.Message | discord.WebhookMessage:
            """Once the fine-tune is queued: the follow-up that ends "thinking", then the progress message in the channel.
            A refusal (one is already running) is the only message instead."""
            await say(f"Retraining {what}" + (", forced" if force else "") + ".")
            return await say(text)

        async def deliver(outcome: RetrainOutcome) -> None:
            parts = split_message(outcome.text, MESSAGE_LIMIT)
            for index, part in enumerate(parts):
                await say(part, **(_file(outcome) if index == len(parts) - 1 else {}))

        where = reply_to(interaction)
        await bot.core.retrain(where, upload, start, edit, replace=mode == "replace", force=force, deliver=deliver)

    @tree.command(name="addqa", description=BY_NAME["addqa"].help)
    @ADMINS_SEE
    async def addqa(interaction: discord.Interaction, question: str, answer: str) -> None:
        """A new dataset version with one more pair; no training."""
        await admin_reply(interaction, lambda: bot.core.add_pair(question, answer, reply_to(interaction)))

    @tree.command(name="export", description=BY_NAME["export"].help)
    @ADMINS_SEE
    async def export(interaction: discord.Interaction) -> None:
        """The dataset as a JSON attachment, seen by the admin only (ephemeral)."""
        if await refuse_unless_admin(interaction):
            return
        await interaction.response.defer(thinking=True, ephemeral=True)
        text, found = await bot.core.export(ATTACHMENT_LIMIT)
        extra = {"file": discord.File(io.BytesIO(found.data), found.filename)} if found is not None else {}
        await interaction.followup.send(text, wait=True, ephemeral=True, allowed_mentions=NO_MENTIONS, **extra)

    @tree.command(name="find", description=BY_NAME["find"].help)
    @ADMINS_SEE
    @app_commands.describe(query="Words to look for in the questions and answers")
    async def find(interaction: discord.Interaction, query: str) -> None:
        """The nearest pairs, numbered, seen by the admin only."""
        await admin_reply(interaction, lambda: bot.core.find(query), private=True)

    @tree.command(name="forget", description=BY_NAME["forget"].help)
    @ADMINS_SEE
    @app_commands.describe(question="The question whose pair to remove, as stored, or its number from /find")
    async def forget(interaction: discord.Interaction, question: str) -> None:
        """A new dataset version without that pair; no training."""
        await admin_reply(interaction, lambda: bot.core.forget(question, reply_to(interaction)))

    @tree.command(name="undo", description=BY_NAME["undo"].help)
    @ADMINS_SEE
    async def undo(interaction: discord.Interaction) -> None:
        """The last one-pair edit taken back."""
        await admin_reply(interaction, lambda: bot.core.undo(reply_to(interaction)))

    @tree.command(name="status", description=BY_NAME["status"].help)
    @ADMINS_SEE
    async def status(interaction: discord.Interaction) -> None:
        """What is going on."""
        await admin_reply(interaction, bot.core.status)

    @tree.command(name="models", description=BY_NAME["models"].help)
    @ADMINS_SEE
    async def models(interaction: discord.Interaction) -> None:
        """The last versions, the live one marked."""
        await admin_reply(interaction, bot.core.models)

    @tree.command(name="rollback", description=BY_NAME["rollback"].help)
    @ADMINS_SEE
    async def rollback(interaction: discord.Interaction, version: str | None = None) -> None:
        """Switch the live version."""
        await admin_reply(interaction, lambda: bot.core.rollback(version, reply_to(interaction)))

    @tree.command(name="unanswered", description=BY_NAME["unanswered"].help)
    @ADMINS_SEE
    @app_commands.describe(page="Which page of the list (10 questions a page)")
    async def unanswered(interaction: discord.Interaction, page: app_commands.Range[int, 1] = 1) -> None:
        """The open questions of the inbox, with their ids, seen by the admin only."""
        await admin_reply(interaction, lambda: bot.core.inbox(page), private=True)

    @tree.command(name="answer", description=BY_NAME["answer"].help)
    @ADMINS_SEE
    @app_commands.describe(id="The question's id from /unanswered", answer="The answer")
    async def answer(interaction: discord.Interaction, id: str, answer: str) -> None:
        """A new pair; the people who asked get the answer."""
        await admin_reply(interaction, lambda: bot.core.inbox_answer(id, answer, reply_to(interaction)), private=True)

    @tree.command(name="dismiss", description=BY_NAME["dismiss"].help)
    @ADMINS_SEE
    @app_commands.describe(id="The question's id from /unanswered")
    async def dismiss(interaction: discord.Interaction, id: str) -> None:
        """Close the question."""
        await admin_reply(interaction, lambda: bot.core.inbox_dismiss(id, reply_to(interaction)), private=True)
