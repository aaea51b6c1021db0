"""How the Discord bot sends: follow-ups split at Discord's limit, never pinging anyone a question names, and the
messages it sends of its own accord (bots.delivery: fine-tune outcomes, admins' answers, alerts)."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import discord

from bots.delivery import Delivery
from bots.split import split_message
from qabot.shapes import ReplyTo

if TYPE_CHECKING:
    from bots.discord_bot import QabotDiscord

MESSAGE_LIMIT = 2000
PLATFORM = "discord"
NO_MENTIONS = discord.AllowedMentions.none()  # a question can never make the bot ping @everyone, a role or a person


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


async def send_followup(interaction: discord.Interaction, text: str, ephemeral: bool = False) -> list[discord.WebhookMessage]:
    return [
        await interaction.followup.send(part, wait=True, ephemeral=ephemeral, allowed_mentions=NO_MENTIONS)
        for part in split_message(text, MESSAGE_LIMIT)
    ]


def reply_to(interaction: discord.Interaction) -> ReplyTo:
    return ReplyTo(PLATFORM, str(interaction.user.id), str(interaction.channel_id))
