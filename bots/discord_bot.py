"""The Discord front end (discord.py): /ask and friends as slash commands, mentions and replies too."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Literal

import discord
import yarl
from discord import app_commands

from bots.commands import BY_NAME
from bots.core import ADMIN_HELP, HELP_TEXT, REFUSAL, BotCore, RetrainOutcome
from bots.delivery import Delivery
from bots.feedback import REPORT_APOLOGY, Reply, remember, report_wrong
from bots.render import CHAT_HINTS
from bots.split import split_message
from qabot.settings import Settings
from qabot.shapes import ReplyTo

logger = logging.getLogger(__name__)

MESSAGE_LIMIT = 2000
PLATFORM = "discord"
NO_MENTIONS = discord.AllowedMentions.none()  # a question can never make the bot ping @everyone, a role or a person
WRONG_EMOJI = "\N{THUMBS DOWN SIGN}"  # a 👎 (any skin tone) on one of the bot's answers flags it as wrong


def use_api(url: str | None) -> None:
    """Point discord.py at another API (a proxy, a test server): REST at <url>/api/v10, gateway at <url>/gateway."""
    if not url:
        return
    base = url.rstrip("/")
    discord.http.Route.BASE = f"{base}/api/v10"
    scheme = "wss" if base.startswith("https") else "ws"
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(f"{scheme}{base[base.index(':') :]}/gateway")


def _file(outcome: RetrainOutcome) -> dict:
    return {"file": discord.File(io.BytesIO(outcome.image), "loss.png")} if outcome.image is not None else {}


class DiscordDelivery(Delivery):
    """bots.delivery on discord.py: outcomes name their requester (pinging only them), the loss curve is attached;
    an alert that reaches no admin by DM goes to the channel of the question, without pings."""

    platform, limit, alert_in_chat = PLATFORM, MESSAGE_LIMIT, True

    def __init__(self, client: QabotDiscord) -> None:
        super().__init__(client.settings.discord_admins)
        self.client = client

    def addressed(self, user: str, text: str) -> str:
        return f"<@{user}> {text}"

    async def send(
        self, chat: str, text: str, *, reply_to: str | None = None, image: bytes | None = None, ping: str | None = None
    ) -> None:
        channel = self.client.get_channel(int(chat)) or await self.client.fetch_channel(int(chat))
        mentions = (
            discord.AllowedMentions(everyone=False, roles=False, users=[discord.Object(int(ping))]) if ping else NO_MENTIONS
        )
        extra = {"file": discord.File(io.BytesIO(image), "loss.png")} if image is not None else {}
        await channel.send(text, allowed_mentions=mentions, **extra)

    async def send_private(self, user: int, text: str) -> None:
        person = self.client.get_user(user) or await self.client.fetch_user(user)
        await person.send(text, allowed_mentions=NO_MENTIONS)


class QabotDiscord(discord.Client):
    """A client with an app-command tree; commands are synced at start."""

    def __init__(self, settings: Settings, core: BotCore | None = None) -> None:
        intents = discord.Intents.default()
        intents.message_content = True  # to read questions in mentions and replies; enable it in the developer portal
        super().__init__(intents=intents, allowed_mentions=NO_MENTIONS)
        use_api(settings.discord_api_url)
        self.settings = settings
        self.core = core or BotCore(settings)
        self.outbox = DiscordDelivery(self)
        self.core.platform, self.core.alert = PLATFORM, self.outbox.alert_admins
        self.core.hints = replace(CHAT_HINTS, escape=discord.utils.escape_markdown)  # `[verify](https://...)` stays text
        self.core.how_to_flag = f"To tell the admins one of my answers was wrong, react to that answer with {WRONG_EMOJI}."
        self.tree = app_commands.CommandTree(self)
        self.delivery: asyncio.Task | None = None
        _register(self)

    async def setup_hook(self) -> None:
        """Sync slash commands when the bot starts; deliver fine-tunes that ended while no bot followed them."""
        await self.tree.sync()
        self.delivery = asyncio.create_task(self.core.keep_delivering(PLATFORM, self.outbox.deliver, self.outbox.notify))

    async def close(self) -> None:
        if self.delivery is not None:
            self.delivery.cancel()
        await super().close()

    # -- who may do what --------------------------------------------------------------------
    def allowed_here(self, guild_id: int | None, channel_id: int | None) -> bool:
        guilds, channels = self.settings.discord_guilds, self.settings.discord_channels
        return (not guilds or guild_id in guilds) and (not channels or channel_id in channels)

    def is_admin(self, user: discord.abc.User) -> bool:
        if user.id in self.settings.discord_admins:
            return True
        roles = {role.id for role in getattr(user, "roles", [])}
        return bool(roles & set(self.settings.discord_admin_roles))

    # -- mentions and replies ---------------------------------------------------------------
    async def on_message(self, message: discord.Message) -> None:
        """Answer a mention of the bot, or a reply to one of its messages."""
        if message.author.bot or self.user is None:
            return
        if not self.allowed_here(message.guild.id if message.guild else None, message.channel.id):
            return
        replied = (
            message.reference is not None
            and isinstance(message.reference.resolved, discord.Message)
            and (message.reference.resolved.author.id == self.user.id)
        )
        if not (self.user in message.mentions or replied or message.guild is None):
            return
        question = message.content.replace(f"<@{self.user.id}>", "").replace(f"<@!{self.user.id}>", "").strip()
        async with message.channel.typing():
            answer: Reply = await self.core.ask(f"dc:{message.author.id}", question, f"dc:{message.channel.id}")
        sent = [
            await message.reply(part, mention_author=False, allowed_mentions=NO_MENTIONS)
            for part in split_message(answer.text, MESSAGE_LIMIT)
        ]
        await remember(self.core.client, PLATFORM, str(message.channel.id), [str(m.id) for m in sent], answer)

    async def on_raw_reaction_add(self, payload: discord.RawReactionActionEvent) -> None:
        """A 👎 on one of the bot's answers: the question goes to the admins' inbox; the first one is acknowledged."""
        if self.user is None or payload.user_id == self.user.id or not (payload.emoji.name or "").startswith(WRONG_EMOJI):
            return
        if payload.message_author_id not in (None, self.user.id) or not self.allowed_here(payload.guild_id, payload.channel_id):
            return
        chat, message = str(payload.channel_id), str(payload.message_id)
        feedback = await report_wrong(self.core.client, PLATFORM, chat, message, f"dc:{payload.user_id}")
        if feedback is None or not (feedback.first or feedback.text == REPORT_APOLOGY):
            return  # not an answer the bot remembers, or already acknowledged under that answer
        channel = self.get_channel(payload.channel_id) or await self.fetch_channel(payload.channel_id)
        reference = discord.MessageReference(
            message_id=payload.message_id, channel_id=payload.channel_id, fail_if_not_exists=False
        )
        await channel.send(feedback.text, reference=reference, mention_author=False, allowed_mentions=NO_MENTIONS)


async def _send(interaction: discord.Interaction, text: str, ephemeral: bool = False) -> list[discord.WebhookMessage]:
    return [
        await interaction.followup.send(part, wait=True, ephemeral=ephemeral, allowed_mentions=NO_MENTIONS)
        for part in split_message(text, MESSAGE_LIMIT)
    ]


def _reply_to(interaction: discord.Interaction) -> ReplyTo:
    return ReplyTo(PLATFORM, str(interaction.user.id), str(interaction.channel_id))


# Admin commands are hidden from members without Manage Server (they may be shown to others per server, in Server
# Settings > Integrations); the bot still checks admins itself (QABOT_DISCORD_ADMINS, QABOT_DISCORD_ADMIN_ROLES).
ATTACHMENT_LIMIT = 10 * 1024 * 1024  # what any server accepts from a bot (boosted servers take more)
ADMINS_SEE = app_commands.default_permissions(manage_guild=True)


def _register(bot: QabotDiscord) -> None:
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
        await _send(interaction, await reply(), ephemeral=private)

    @tree.command(name="ask", description=BY_NAME["ask"].help)
    @app_commands.describe(question="Your question")
    async def ask(interaction: discord.Interaction, question: str) -> None:
        """Deferred at once (Discord allows 3 s), answered in a follow-up."""
        if not bot.allowed_here(interaction.guild_id, interaction.channel_id):
            await interaction.response.send_message(
                "I don't answer in this channel.", ephemeral=True, allowed_mentions=NO_MENTIONS
            )
            return
        await interaction.response.defer(thinking=True)
        answer = await bot.core.ask(f"dc:{interaction.user.id}", question, f"dc:{interaction.channel_id}")
        sent = await _send(interaction, answer.text)
        await remember(bot.core.client, PLATFORM, str(interaction.channel_id), [str(m.id) for m in sent], answer)

    @tree.command(name="help", description=BY_NAME["help"].help)
    async def help_(interaction: discord.Interaction) -> None:
        """Two lines about the bot."""
        extra = "\n" + ADMIN_HELP if bot.is_admin(interaction.user) else ""
        await interaction.response.send_message(HELP_TEXT + extra, ephemeral=True, allowed_mentions=NO_MENTIONS)

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
                await _send(
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

        outcome = await bot.core.retrain(_reply_to(interaction), upload, start, edit, replace=mode == "replace", force=force)
        if outcome is None:
            return
        parts = split_message(outcome.text, MESSAGE_LIMIT)
        for index, part in enumerate(parts):
            await say(part, **(_file(outcome) if index == len(parts) - 1 else {}))

    @tree.command(name="addqa", description=BY_NAME["addqa"].help)
    @ADMINS_SEE
    async def addqa(interaction: discord.Interaction, question: str, answer: str) -> None:
        """A new dataset version with one more pair; no training."""
        await admin_reply(interaction, lambda: bot.core.add_pair(question, answer, _reply_to(interaction)))

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
        await admin_reply(interaction, lambda: bot.core.forget(question, _reply_to(interaction)))

    @tree.command(name="undo", description=BY_NAME["undo"].help)
    @ADMINS_SEE
    async def undo(interaction: discord.Interaction) -> None:
        """The last one-pair edit taken back."""
        await admin_reply(interaction, lambda: bot.core.undo(_reply_to(interaction)))

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
        await admin_reply(interaction, lambda: bot.core.rollback(version, _reply_to(interaction)))

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
        await admin_reply(interaction, lambda: bot.core.inbox_answer(id, answer, _reply_to(interaction)), private=True)

    @tree.command(name="dismiss", description=BY_NAME["dismiss"].help)
    @ADMINS_SEE
    @app_commands.describe(id="The question's id from /unanswered")
    async def dismiss(interaction: discord.Interaction, id: str) -> None:
        """Close the question."""
        await admin_reply(interaction, lambda: bot.core.inbox_dismiss(id, _reply_to(interaction)), private=True)


def main(settings: Settings) -> None:
    """Run the Discord bot until stopped."""
    if settings.discord_token is None:
        raise ValueError("QABOT_DISCORD_TOKEN is not set: create a bot in the Discord developer portal and set its token")
    QabotDiscord(settings).run(settings.discord_token.get_secret_value(), log_handler=None)
