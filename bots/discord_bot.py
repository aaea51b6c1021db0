"""The Discord front end (discord.py): /ask and friends as slash commands, mentions and replies too."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

import discord
from discord import app_commands

from bots.core import ADMIN_HELP, HELP_TEXT, REFUSAL, BotCore, split_message
from qabot.settings import Settings

logger = logging.getLogger(__name__)

MESSAGE_LIMIT = 2000


class QabotDiscord(discord.Client):
    """A client with an app-command tree; commands are synced at start."""

    def __init__(self, settings: Settings, core: BotCore | None = None) -> None:
        intents = discord.Intents.default()
        intents.message_content = True  # to read questions in mentions and replies; enable it in the developer portal
        super().__init__(intents=intents)
        self.settings = settings
        self.core = core or BotCore(settings)
        self.tree = app_commands.CommandTree(self)
        _register(self)

    async def setup_hook(self) -> None:
        """Sync slash commands when the bot starts."""
        await self.tree.sync()

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
            text = await self.core.ask(f"dc:{message.author.id}", question, f"dc:{message.channel.id}")
        for part in split_message(text, MESSAGE_LIMIT):
            await message.reply(part, mention_author=False)


async def _send(interaction: discord.Interaction, text: str) -> None:
    for part in split_message(text, MESSAGE_LIMIT):
        await interaction.followup.send(part)


def _register(bot: QabotDiscord) -> None:
    tree = bot.tree

    async def refuse_unless_admin(interaction: discord.Interaction) -> bool:
        if bot.is_admin(interaction.user):
            return False
        await interaction.response.send_message(REFUSAL, ephemeral=True)
        return True

    @tree.command(name="ask", description="Ask the bot a question.")
    @app_commands.describe(question="Your question")
    async def ask(interaction: discord.Interaction, question: str) -> None:
        """Deferred at once (Discord allows 3 s), answered in a follow-up."""
        if not bot.allowed_here(interaction.guild_id, interaction.channel_id):
            await interaction.response.send_message("I don't answer in this channel.", ephemeral=True)
            return
        await interaction.response.defer(thinking=True)
        await _send(interaction, await bot.core.ask(f"dc:{interaction.user.id}", question, f"dc:{interaction.channel_id}"))

    @tree.command(name="help", description="What this bot does.")
    async def help_(interaction: discord.Interaction) -> None:
        """Two lines about the bot."""
        extra = "\n" + ADMIN_HELP if bot.is_admin(interaction.user) else ""
        await interaction.response.send_message(HELP_TEXT + extra, ephemeral=True)

    @tree.command(name="retrain", description="Retrain the bot, optionally on an attached JSON dataset (admins).")
    @app_commands.describe(dataset="A JSON array or JSON Lines file of {prompt, response}")
    async def retrain(interaction: discord.Interaction, dataset: discord.Attachment | None = None) -> None:
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
                return await channel.send(text, **extra)
            acked = True
            return await interaction.followup.send(text, wait=True, **extra)

        async def edit(handle: discord.Message | discord.WebhookMessage, text: str) -> None:
            with contextlib.suppress(discord.HTTPException):
                await handle.edit(content=text)

        outcome = await bot.core.retrain(f"dc:{interaction.user.id}", upload, say, edit)
        parts = split_message(outcome.text, MESSAGE_LIMIT)
        for index, part in enumerate(parts):
            last = index == len(parts) - 1 and outcome.image is not None
            await say(part, **({"file": discord.File(Path(outcome.image), "loss.png")} if last else {}))

    @tree.command(name="addqa", description="Add one question and answer to the dataset (admins).")
    async def addqa(interaction: discord.Interaction, question: str, answer: str) -> None:
        """A new dataset version with one more pair; no training."""
        if await refuse_unless_admin(interaction):
            return
        await interaction.response.send_message(bot.core.add_pair(f"{question} | {answer}"))

    @tree.command(name="status", description="Live model, queues and training (admins).")
    async def status(interaction: discord.Interaction) -> None:
        """What is going on."""
        if await refuse_unless_admin(interaction):
            return
        await interaction.response.defer(thinking=True)
        await _send(interaction, await asyncio.to_thread(bot.core.status))

    @tree.command(name="models", description="Model versions (admins).")
    async def models(interaction: discord.Interaction) -> None:
        """The last versions, the live one marked."""
        if await refuse_unless_admin(interaction):
            return
        await interaction.response.send_message(bot.core.models()[:MESSAGE_LIMIT])

    @tree.command(name="rollback", description="Go back to the previous (or a named) model version (admins).")
    async def rollback(interaction: discord.Interaction, version: str | None = None) -> None:
        """Switch the live version."""
        if await refuse_unless_admin(interaction):
            return
        await interaction.response.send_message(bot.core.rollback(version))


def main(settings: Settings) -> None:
    """Run the Discord bot until stopped."""
    if settings.discord_token is None:
        raise ValueError("QABOT_DISCORD_TOKEN is not set: create a bot in the Discord developer portal and set its token")
    QabotDiscord(settings).run(settings.discord_token.get_secret_value(), log_handler=None)
