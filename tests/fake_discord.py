"""A fake Discord REST API and gateway on 127.0.0.1 that the real discord.py logs in to and talks to."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from aiohttp import WSMsgType, web

from tests.fake_server import Watched

APP_ID = "700000000000000001"
BOT_ID = "700000000000000002"
GUILD_ID = "700000000000000003"
CHANNEL_ID = "700000000000000004"
OTHER_CHANNEL_ID = "700000000000000005"
ADMIN_ROLE_ID = "700000000000000006"
THREAD_ID = "700000000000000007"  # a thread of CHANNEL_ID
OTHER_THREAD_ID = "700000000000000008"  # a thread of OTHER_CHANNEL_ID
THREADS = {THREAD_ID: CHANNEL_ID, OTHER_THREAD_ID: OTHER_CHANNEL_ID}
BOT_USER = {"id": BOT_ID, "username": "qabot", "discriminator": "0", "global_name": "qabot", "avatar": None, "bot": True}


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _thread(thread_id: str, parent_id: str) -> dict[str, Any]:
    """A public thread of a guild channel, as the gateway and interactions describe it."""
    return {
        "id": thread_id,
        "type": 11,
        "guild_id": GUILD_ID,
        "parent_id": parent_id,
        "name": f"thread of {parent_id}",
        "owner_id": "1",
        "last_message_id": None,
        "rate_limit_per_user": 0,
        "message_count": 0,
        "member_count": 1,
        "flags": 0,
        "thread_metadata": {"archived": False, "auto_archive_duration": 1440, "archive_timestamp": _now(), "locked": False},
    }


def user(user_id: int | str) -> dict[str, Any]:
    return {
        "id": str(user_id),
        "username": f"user{user_id}",
        "discriminator": "0",
        "global_name": None,
        "avatar": None,
        "bot": False,
    }


class FakeDiscord(Watched):
    """REST under /api/v10, the gateway at /gateway; records calls; pushes events to the bot."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, str, Any]] = []
        self.messages: dict[str, dict[str, Any]] = {}  # by id, as last edited
        self.deleted: set[str] = set()  # messages deleted since they were sent: a reply to one needs fail_if_not_exists
        self.callbacks: list[dict[str, Any]] = []
        self.commands: list[dict[str, Any]] = []
        self.files: dict[str, bytes] = {}
        self._ids = itertools.count(800_000_000_000_000_000)
        self._seq = itertools.count(1)
        self._socket: web.WebSocketResponse | None = None
        self.ready = asyncio.Event()
        self.runner: web.AppRunner | None = None
        self.url = ""

    def new_id(self) -> str:
        return str(next(self._ids))

    # -- server -----------------------------------------------------------------------------
    async def start(self) -> None:
        app = web.Application(client_max_size=50 * 1024 * 1024)
        app.router.add_get("/gateway", self._gateway)
        app.router.add_get("/attachments/{name}", self._attachment)
        app.router.add_route("*", "/api/v10/{path:.*}", self._rest)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"

    async def stop(self) -> None:
        if self._socket is not None:
            await self._socket.close()
        if self.runner:
            await self.runner.cleanup()

    @staticmethod
    def _json(data: Any, status: int = 200) -> web.Response:
        # discord.py wants exactly "application/json", no charset
        return web.Response(body=json.dumps(data).encode(), status=status, headers={"Content-Type": "application/json"})

    async def _attachment(self, request: web.Request) -> web.Response:
        return web.Response(body=self.files[request.match_info["name"]])

    async def _rest(self, request: web.Request) -> web.Response:
        path = request.match_info["path"]
        body: Any = None
        files: dict[str, bytes] = {}
        if request.can_read_body:
            if request.content_type.startswith("multipart/"):
                form = await request.post()
                body = json.loads(form["payload_json"]) if "payload_json" in form else {}
                files = {k: v.file.read() for k, v in form.items() if not isinstance(v, str)}
            else:
                text = await request.text()
                body = json.loads(text) if text else None
        self.calls.append((request.method, path, body))
        self._changed.set()
        parts = path.split("/")
        if path == "users/@me":
            return self._json(BOT_USER)
        if path == "oauth2/applications/@me":
            return self._json(
                {
                    "id": APP_ID,
                    "name": "qabot",
                    "icon": None,
                    "description": "",
                    "bot_public": True,
                    "bot_require_code_grant": False,
                    "owner": BOT_USER,
                    "verify_key": "0" * 64,
                    "flags": 0,
                    "summary": "",
                    "team": None,
                }
            )
        if request.method == "PUT" and parts[0] == "applications" and parts[-1] == "commands":
            self.commands = body
            return self._json([{**c, "id": self.new_id(), "application_id": APP_ID, "version": "1"} for c in body])
        if parts[0] == "channels" and parts[-1] == "typing":
            return web.Response(status=204)
        if parts[0] == "channels" and parts[-1] == "messages" and request.method == "POST":
            reference = (body or {}).get("message_reference") or {}
            if str(reference.get("message_id")) in self.deleted:
                if reference.get("fail_if_not_exists", True):
                    return self._json({"message": "Unknown message", "code": 10008}, status=400)
                body = {k: v for k, v in body.items() if k != "message_reference"}  # sent as a plain message
            return self._json(self._bot_message(parts[1], body, files))
        if parts[0] == "channels" and parts[-2] == "messages" and request.method == "PATCH":
            message = self.messages[parts[-1]]
            message["content"] = body.get("content", message["content"])
            message.setdefault("edits", []).append(message["content"])
            return self._json(_public(message))
        if parts[0] == "interactions" and parts[-1] == "callback":
            self.callbacks.append({"interaction": parts[1], **body})
            flags = (body.get("data") or {}).get("flags", 0)
            answer: dict[str, Any] = {
                "interaction": {
                    "id": parts[1],
                    "type": 2,
                    "response_message_loading": body["type"] == 5,
                    "response_message_ephemeral": bool(flags & 64),
                }
            }
            if body.get("type") == 4:  # an immediate reply
                message = self._bot_message(CHANNEL_ID, body["data"], files, webhook=parts[2])
                answer["interaction"]["response_message_id"] = message["id"]
                answer["resource"] = {"type": 4, "message": message}
            return self._json(answer)
        if parts[0] == "webhooks" and request.method == "POST":  # a follow-up
            return self._json(self._bot_message(CHANNEL_ID, body, files, webhook=parts[2]))
        if parts[0] == "webhooks" and request.method == "PATCH":  # a follow-up edited
            message = self.messages[parts[-1]] if parts[-1] != "@original" else self._original(parts[2])
            message["content"] = body.get("content", message["content"])
            message.setdefault("edits", []).append(message["content"])
            return self._json(_public(message))
        return self._json({"message": f"404: {request.method} {path}", "code": 0}, status=404)

    def _original(self, token: str) -> dict[str, Any]:
        return next(m for m in self.messages.values() if m.get("webhook") == token)

    def _bot_message(self, channel_id: str, body: dict[str, Any], files: dict[str, bytes], **extra: Any) -> dict[str, Any]:
        message = {
            "id": self.new_id(),
            "channel_id": channel_id,
            "guild_id": GUILD_ID,
            "author": BOT_USER,
            "content": (body or {}).get("content") or "",
            "timestamp": _now(),
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "attachments": [],
            "embeds": [],
            "pinned": False,
            "type": 0,
            "flags": (body or {}).get("flags", 0),
            "files": files,
            **extra,
        }
        if (body or {}).get("message_reference"):
            message["message_reference"] = body["message_reference"]
        self.messages[message["id"]] = message
        return _public(message)

    # -- gateway ----------------------------------------------------------------------------
    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        self._socket = socket
        await socket.send_str(json.dumps({"op": 10, "d": {"heartbeat_interval": 45000}, "s": None, "t": None}))
        async for frame in socket:
            if frame.type != WSMsgType.TEXT:
                continue
            payload = json.loads(frame.data)
            if payload["op"] == 1:
                await socket.send_str(json.dumps({"op": 11, "d": None, "s": None, "t": None}))
            elif payload["op"] == 2:
                ws_url = self.url.replace("http", "ws") + "/gateway"
                await self.dispatch(
                    "READY",
                    {
                        "v": 10,
                        "user": BOT_USER,
                        "guilds": [{"id": GUILD_ID, "unavailable": True}],
                        "session_id": "session",
                        "resume_gateway_url": ws_url,
                        "application": {"id": APP_ID, "flags": 0},
                        "private_channels": [],
                    },
                )
                await self.dispatch("GUILD_CREATE", self._guild())
                self.ready.set()
        return socket

    def _guild(self) -> dict[str, Any]:
        channel = {"type": 0, "guild_id": GUILD_ID, "position": 0, "permission_overwrites": [], "parent_id": None, "nsfw": False}
        everyone = {
            "id": GUILD_ID,
            "name": "@everyone",
            "permissions": "2251799813685247",
            "position": 0,
            "color": 0,
            "hoist": False,
            "managed": False,
            "mentionable": False,
            "flags": 0,
        }
        admins = {**everyone, "id": ADMIN_ROLE_ID, "name": "admins", "position": 1}
        return {
            "id": GUILD_ID,
            "name": "Eldoria fans",
            "icon": None,
            "owner_id": "1",
            "afk_timeout": 300,
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "roles": [everyone, admins],
            "emojis": [],
            "stickers": [],
            "features": [],
            "mfa_level": 0,
            "system_channel_flags": 0,
            "premium_tier": 0,
            "preferred_locale": "en-US",
            "nsfw_level": 0,
            "large": False,
            "unavailable": False,
            "member_count": 2,
            "voice_states": [],
            "threads": [_thread(thread_id, parent_id) for thread_id, parent_id in THREADS.items()],
            "presences": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "joined_at": _now(),
            "members": [{"user": BOT_USER, "roles": [], "joined_at": _now(), "deaf": False, "mute": False, "flags": 0}],
            "channels": [
                {**channel, "id": CHANNEL_ID, "name": "general"},
                {**channel, "id": OTHER_CHANNEL_ID, "name": "off-topic"},
            ],
        }

    async def dispatch(self, event: str, data: dict[str, Any]) -> None:
        await self._socket.send_str(json.dumps({"op": 0, "t": event, "s": next(self._seq), "d": data}))

    # -- what a person does -----------------------------------------------------------------
    def _member(self, user_id: int, roles: list[str]) -> dict[str, Any]:
        return {
            "user": user(user_id),
            "roles": roles,
            "joined_at": _now(),
            "deaf": False,
            "mute": False,
            "flags": 0,
            "permissions": "2251799813685247",
        }

    async def say(
        self, user_id: int, content: str, *, channel_id: str = CHANNEL_ID, mention: bool = False, reply_to: str | None = None
    ) -> str:
        """A person writes in a guild channel; returns the message id."""
        message_id = self.new_id()
        member = self._member(user_id, [])
        data = {
            "id": message_id,
            "channel_id": channel_id,
            "guild_id": GUILD_ID,
            "author": user(user_id),
            "member": {k: v for k, v in member.items() if k != "user"},
            "content": (f"<@{BOT_ID}> " if mention else "") + content,
            "timestamp": _now(),
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": [{**BOT_USER, "member": {"roles": [], "joined_at": _now(), "deaf": False, "mute": False}}]
            if mention
            else [],
            "mention_roles": [],
            "attachments": [],
            "embeds": [],
            "pinned": False,
            "type": 19 if reply_to else 0,
            "flags": 0,
        }
        if reply_to:
            data["message_reference"] = {"message_id": reply_to, "channel_id": channel_id, "guild_id": GUILD_ID}
            data["referenced_message"] = _public(self.messages[reply_to])
        await self.dispatch("MESSAGE_CREATE", data)
        return message_id

    async def react(self, user_id: int, message_id: str, emoji: str = "\N{THUMBS DOWN SIGN}") -> None:
        """A person adds a reaction to a message (MESSAGE_REACTION_ADD)."""
        message = self.messages.get(message_id, {})
        channel_id = message.get("channel_id", CHANNEL_ID)
        await self.dispatch(
            "MESSAGE_REACTION_ADD",
            {
                "user_id": str(user_id),
                "channel_id": channel_id,
                "message_id": message_id,
                "guild_id": GUILD_ID,
                "member": {k: v for k, v in self._member(user_id, []).items()},
                "emoji": {"id": None, "name": emoji},
                "message_author_id": message.get("author", {}).get("id"),
                "burst": False,
                "burst_colors": [],
                "type": 0,
            },
        )

    async def slash(
        self,
        user_id: int,
        name: str,
        options: dict[str, Any] | None = None,
        *,
        roles: list[str] | None = None,
        attachment: tuple[str, bytes] | None = None,
        channel_id: str = CHANNEL_ID,
    ) -> str:
        """A person runs a slash command; returns the interaction token."""
        command = next(c for c in self.commands if c["name"] == name)
        token = f"token-{self.new_id()}"
        opts = [
            {"name": k, "type": next(o["type"] for o in command.get("options", []) if o["name"] == k), "value": v}
            for k, v in (options or {}).items()
        ]
        data: dict[str, Any] = {"id": self.new_id(), "name": name, "type": 1, "options": opts}
        if attachment is not None:
            attachment_id = self.new_id()
            filename, content = attachment
            self.files[filename] = content
            opts.append({"name": "dataset", "type": 11, "value": attachment_id})
            data["resolved"] = {
                "attachments": {
                    attachment_id: {
                        "id": attachment_id,
                        "filename": filename,
                        "size": len(content),
                        "url": f"{self.url}/attachments/{filename}",
                        "proxy_url": f"{self.url}/attachments/{filename}",
                        "content_type": "application/json",
                    }
                }
            }
        await self.dispatch(
            "INTERACTION_CREATE",
            {
                "id": self.new_id(),
                "application_id": APP_ID,
                "type": 2,
                "data": data,
                "guild_id": GUILD_ID,
                "channel_id": channel_id,
                "channel": _thread(channel_id, THREADS[channel_id])
                if channel_id in THREADS
                else {
                    "id": channel_id,
                    "type": 0,
                    "guild_id": GUILD_ID,
                    "name": "general",
                    "position": 0,
                    "permission_overwrites": [],
                    "nsfw": False,
                    "parent_id": None,
                },
                "member": self._member(user_id, roles or []),
                "token": token,
                "version": 1,
                "app_permissions": "2251799813685247",
                "locale": "en-US",
                "guild_locale": "en-US",
                "entitlements": [],
                "authorizing_integration_owners": {},
                "context": 0,
                "attachment_size_limit": 26214400,
            },
        )
        return token

    # -- what the test checks ---------------------------------------------------------------
    def replies_to(self, message_id: str) -> list[str]:
        return [
            m["content"]
            for m in self.messages.values()
            if str((m.get("message_reference") or {}).get("message_id")) == message_id
        ]

    def contents(self) -> list[str]:
        return [m["content"] for m in self.messages.values()]

    def followups(self, token: str) -> list[dict[str, Any]]:
        return [m for m in self.messages.values() if m.get("webhook") == token or m.get("interaction") == token]

    def typing_in(self, channel_id: str) -> int:
        return sum(1 for method, path, _ in self.calls if method == "POST" and path == f"channels/{channel_id}/typing")


def _public(message: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in message.items() if k not in {"edits", "files", "webhook", "interaction"}}


@contextlib.asynccontextmanager
async def discord_bot_on_fake(settings: Any, monkeypatch: Any, **timings: float) -> AsyncIterator[FakeDiscord]:
    """A fake Discord with the real bot logged in to it (its commands synced); `timings` set BotCore's polls."""
    import discord

    from bots.core import BotCore
    from bots.discord_bot import QabotDiscord

    fake = FakeDiscord()
    await fake.start()
    # The library's own constants are put back after the test; the bot points them at the fake by its setting.
    monkeypatch.setattr(discord.http.Route, "BASE", discord.http.Route.BASE)
    monkeypatch.setattr(discord.gateway.DiscordWebSocket, "DEFAULT_GATEWAY", discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY)
    settings = settings.model_copy(update={"discord_api_url": fake.url})
    core = BotCore(settings)
    for name, value in {"delivery_poll": 0.5, **timings}.items():
        setattr(core, name, value)
    bot = QabotDiscord(settings, core)
    token = settings.discord_token  # a SecretStr, or the plain text a test's model_copy put there
    task = asyncio.create_task(bot.start(token if isinstance(token, str) else token.get_secret_value()))
    try:
        await asyncio.wait_for(fake.ready.wait(), 30)
        await fake.wait_for(lambda: fake.commands)
        yield fake
    finally:
        await bot.close()
        task.cancel()
        await fake.stop()
