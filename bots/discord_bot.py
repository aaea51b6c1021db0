"""The Discord front end (discord.py): /ask and /help as slash commands, mentions and replies too (the admin
commands: bots.discord_admin)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

import discord
import yarl
from discord import app_commands

from bots.commands import BY_NAME
from bots.core import ADMIN_HELP, HELP_TEXT, BotCore
from bots.discord_admin import register_admin
from bots.discord_delivery import MESSAGE_LIMIT, NO_MENTIONS, PLATFORM, DiscordDelivery, send_followup
from bots.feedback import REPORT_APOLOGY, Reply, remember, report_wrong
from bots.render_inbox import CHAT_HINTS
from bots.split import split_message
from qabot.settings import Settings

logger = logging.getLogger(__name__)

WRONG_EMOJI = "\N{THUMBS DOWN SIGN}"  # a 👎 (any skin tone) on one of the bot's answers flags it as wrong


def use_api(url: str | None) -> None:
    """Point discord.py at another API (a proxy, a test server): REST at <url>/api/v10, gateway at <url>/gateway."""
    if not url:
        return
    base = url.rstrip("/")
    discord.http.Route.BASE = f"{base}/api/v10"
    scheme = "wss" if base.startswith("https") else "ws"
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(f"{scheme}{base[base.index(':') :]}/gateway")


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
    def allowed_here(self, guild_id: int | None, channel_id: int | None, parent_id: int | None = None) -> bool:
        """In an allowed guild and channel; a thread (`parent_id`: its channel) is allowed where its channel is."""
        guilds, channels = self.settings.discord_guilds, self.settings.discord_channels
        in_channel = not channels or channel_id in channels or (parent_id is not None and parent_id in channels)
        return (not guilds or guild_id in guilds) and in_channel

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
        guild_id = message.guild.id if message.guild else None
        if not self.allowed_here(guild_id, message.channel.id, getattr(message.channel, "parent_id", None)):
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
        reference = message.to_reference(fail_if_not_exists=False)  # deleted meanwhile: the answer still goes out
        sent = [
            await message.channel.send(part, reference=reference, mention_author=False, allowed_mentions=NO_MENTIONS)
            for part in split_message(answer.text, MESSAGE_LIMIT)
        ]
        await remember(self.core.client, PLATFORM, str(message.channel.id), [str(m.id) for m in sent], answer)

    async def on_raw_reaction_add(self, payload: discord.RawReactionActionEvent) -> None:
        """A 👎 on one of the bot's answers: the question goes to the admins' inbox; the first one is acknowledged."""
        if self.user is None or payload.user_id == self.user.id or not (payload.emoji.name or "").startswith(WRONG_EMOJI):
            return
        if payload.message_author_id not in (None, self.user.id):
            return
        parent_id = getattr(self.get_channel(payload.channel_id), "parent_id", None)  # a thread's channel, from the cache
        if not self.allowed_here(payload.guild_id, payload.channel_id, parent_id):
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


def _register(bot: QabotDiscord) -> None:
    """The slash commands: /ask and /help here, the admin commands from bots.discord_admin."""
    tree = bot.tree

    @tree.command(name="ask", description=BY_NAME["ask"].help)
    @app_commands.describe(question="Your question")
    async def ask(interaction: discord.Interaction, question: str) -> None:
        """Deferred at once (Discord allows 3 s), answered in a follow-up."""
        if not bot.allowed_here(interaction.guild_id, interaction.channel_id, getattr(interaction.channel, "parent_id", None)):
            await interaction.response.send_message(
                "I don't answer in this channel.", ephemeral=True, allowed_mentions=NO_MENTIONS
            )
            return
        await interaction.response.defer(thinking=True)
        answer = await bot.core.ask(f"dc:{interaction.user.id}", question, f"dc:{interaction.channel_id}")
        sent = await send_followup(interaction, answer.text)
        await remember(bot.core.client, PLATFORM, str(interaction.channel_id), [str(m.id) for m in sent], answer)

    @tree.command(name="help", description=BY_NAME["help"].help)
    async def help_(interaction: discord.Interaction) -> None:
        """Two lines about the bot."""
        extra = "\n" + ADMIN_HELP if bot.is_admin(interaction.user) else ""
        await interaction.response.send_message(HELP_TEXT + extra, ephemeral=True, allowed_mentions=NO_MENTIONS)

    register_admin(bot)


def main(settings: Settings) -> None:
    """Run the Discord bot until stopped."""
    if settings.discord_token is None:
        raise ValueError("QABOT_DISCORD_TOKEN is not set: create a bot in the Discord developer portal and set its token")
    QabotDiscord(settings).run(settings.discord_token.get_secret_value(), log_handler=None)
