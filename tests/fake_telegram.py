"""A fake Telegram Bot API server on 127.0.0.1 that the real python-telegram-bot talks to over HTTP."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from tests.fake_server import Watched

BOT_ID = 999_000
BOT_USERNAME = "qabot_test_bot"


class FakeTelegram(Watched):
    """Serves /bot<TOKEN>/<method> and /file/bot<TOKEN>/<path>; records every call; queues updates."""

    def __init__(self, token: str) -> None:
        super().__init__()
        self.token = token
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.sent: dict[int, dict[str, Any]] = {}  # bot messages by id, as last edited
        self.updates: list[dict[str, Any]] = []
        self.files: dict[str, bytes] = {}
        self.menus: dict[str, list[str]] = {}  # command menus by scope (JSON), as setMyCommands set them
        self.unreachable: set[int] = set()  # users who never started a private chat with the bot: it cannot write first
        self.deleted: set[int] = set()  # messages deleted since they were sent: a reply to one needs allow_sending_without_reply
        # (method, params) -> True: that call fails once with a server error, as Telegram's API sometimes does
        self.fail_once: Callable[[str, dict[str, Any]], bool] | None = None
        self._ids = itertools.count(1)
        self._update_ids = itertools.count(1)
        self._new_update = asyncio.Event()
        self.runner: web.AppRunner | None = None
        self.url = ""

    # -- server -----------------------------------------------------------------------------
    async def start(self) -> None:
        app = web.Application(client_max_size=50 * 1024 * 1024)
        app.router.add_route("*", "/bot{token}/{method}", self._method)
        app.router.add_get("/file/bot{token}/{path:.*}", self._file)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self.runner:
            await self.runner.cleanup()

    async def _file(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token or request.match_info["path"] not in self.files:
            return web.Response(status=404)
        return web.Response(body=self.files[request.match_info["path"]])

    async def _method(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return web.json_response({"ok": False, "error_code": 401, "description": "Unauthorized"}, status=401)
        method = request.match_info["method"]
        params: dict[str, Any] = {}
        if request.can_read_body:
            if request.content_type == "application/json":
                params = await request.json()
            else:
                form = await request.post()
                for key, value in form.items():
                    params[key] = value if isinstance(value, str) else value.file.read()
        self.calls.append((method, params))
        handler = getattr(self, f"api_{method}", None)
        if method.startswith("send") and int(params.get("chat_id") or 0) in self.unreachable:
            description = "Forbidden: bot can't initiate conversation with a user"
            return web.json_response({"ok": False, "error_code": 403, "description": description}, status=403)
        if handler is None:
            return web.json_response({"ok": False, "error_code": 404, "description": f"Not Found: {method}"}, status=404)
        if self.fail_once is not None and self.fail_once(method, params):
            self.fail_once = None
            return web.json_response({"ok": False, "error_code": 500, "description": "Internal Server Error"}, status=500)
        reply = params.get("reply_parameters")
        reply = json.loads(reply) if isinstance(reply, str) else reply
        if reply and int(reply["message_id"]) in self.deleted:
            if not reply.get("allow_sending_without_reply"):
                description = "Bad Request: message to be replied not found"
                return web.json_response({"ok": False, "error_code": 400, "description": description}, status=400)
            params = {k: v for k, v in params.items() if k != "reply_parameters"}  # sent as a plain message
        result = await handler(params)
        self._changed.set()
        return web.json_response({"ok": True, "result": result})

    # -- Bot API methods --------------------------------------------------------------------
    async def api_getMe(self, params):
        return {
            "id": BOT_ID,
            "is_bot": True,
            "first_name": "qabot",
            "username": BOT_USERNAME,
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
        }

    async def api_deleteWebhook(self, params):
        return True

    async def api_setWebhook(self, params):
        return True

    async def api_getUpdates(self, params):
        offset = int(params.get("offset") or 0)
        deadline = time.monotonic() + min(float(params.get("timeout") or 0), 1.0)
        while True:
            pending = [u for u in self.updates if u["update_id"] >= offset]
            if pending or time.monotonic() >= deadline:
                return pending
            self._new_update.clear()
            try:
                await asyncio.wait_for(self._new_update.wait(), max(0.01, deadline - time.monotonic()))
            except TimeoutError:
                pass

    async def api_setMyCommands(self, params):
        scope = params.get("scope") or {"type": "default"}
        scope = json.loads(scope) if isinstance(scope, str) else scope
        commands = params["commands"]
        commands = json.loads(commands) if isinstance(commands, str) else commands
        self.menus[json.dumps(scope, sort_keys=True)] = [c["command"] for c in commands]
        return True

    async def api_sendChatAction(self, params):
        return True

    def _bot_message(self, chat_id: int, **content) -> dict[str, Any]:
        message = {
            "message_id": next(self._ids),
            "date": int(time.time()),
            "sent_at": time.monotonic(),
            "chat": {"id": int(chat_id), "type": "private"},
            "from": {"id": BOT_ID, "is_bot": True, "first_name": "qabot", "username": BOT_USERNAME},
            **content,
        }
        self.sent[message["message_id"]] = message
        return _public(message)

    @staticmethod
    def _reply_of(params) -> dict[str, Any]:
        reply = json.loads(params["reply_parameters"]) if "reply_parameters" in params else None
        return {"reply_to_message_id": reply["message_id"]} if reply else {}  # kept flat for the tests to read

    async def api_sendMessage(self, params):
        return self._bot_message(params["chat_id"], text=params["text"], **self._reply_of(params))

    async def api_editMessageText(self, params):
        message = self.sent[int(params["message_id"])]
        message["text"] = params["text"]
        message.setdefault("edits", []).append(params["text"])
        return _public(message)

    async def api_sendPhoto(self, params):
        photo = params["photo"]
        size = len(photo) if isinstance(photo, bytes) else 0
        return self._bot_message(
            params["chat_id"],
            photo=[{"file_id": "p1", "file_unique_id": "p1", "width": 1, "height": 1, "file_size": size}],
            caption=params.get("caption"),
            photo_bytes=photo if isinstance(photo, bytes) else b"",
            **self._reply_of(params),
        )

    async def api_sendDocument(self, params):
        document = params["document"]
        return self._bot_message(
            params["chat_id"],
            document={"file_id": "d1", "file_unique_id": "d1", "file_name": "export.json"},
            caption=params.get("caption"),
            document_bytes=document if isinstance(document, bytes) else b"",
            **self._reply_of(params),
        )

    async def api_getFile(self, params):
        file_id = params["file_id"]
        return {
            "file_id": file_id,
            "file_unique_id": file_id,
            "file_size": len(self.files[f"documents/{file_id}"]),
            "file_path": f"documents/{file_id}",
        }

    # -- what a person does -----------------------------------------------------------------
    def _entities(self, text: str) -> list[dict[str, Any]]:
        entities = []
        command = re.match(r"^/\w+(@\w+)?", text)
        if command:
            entities.append({"type": "bot_command", "offset": 0, "length": command.end()})
        for mention in re.finditer(r"@\w+", text):
            if not command or mention.start() >= command.end():
                entities.append({"type": "mention", "offset": mention.start(), "length": mention.end() - mention.start()})
        return entities

    def _push(self, message: dict[str, Any]) -> int:
        self.updates.append({"update_id": next(self._update_ids), "message": message})
        self._new_update.set()
        return message["message_id"]

    def _message(self, chat_id: int, user_id: int, chat_type: str) -> dict[str, Any]:
        chat = {"id": chat_id, "type": chat_type}
        if chat_type != "private":
            chat["title"] = "Eldoria fans"
        return {
            "message_id": next(self._ids),
            "date": int(time.time()),
            "chat": chat,
            "from": {"id": user_id, "is_bot": False, "first_name": f"user{user_id}"},
        }

    def send_text(self, chat_id: int, user_id: int, text: str, chat_type: str = "private", reply_to: int | None = None) -> int:
        message = self._message(chat_id, user_id, chat_type) | {"text": text, "entities": self._entities(text)}
        if reply_to is not None:
            message["reply_to_message"] = _public(self.sent[reply_to])
        return self._push(message)

    def edit_text(self, message_id: int, text: str) -> None:
        """The person edits a message they sent (Telegram sends an edited_message update)."""
        original = next(u["message"] for u in self.updates if u.get("message", {}).get("message_id") == message_id)
        edited = {**original, "text": text, "entities": self._entities(text), "edit_date": int(time.time())}
        self.updates.append({"update_id": next(self._update_ids), "edited_message": edited})
        self._new_update.set()

    def send_document(self, chat_id: int, user_id: int, filename: str, data: bytes, caption: str = "/retrain") -> int:
        file_id = f"doc{len(self.files) + 1}"
        self.files[f"documents/{file_id}"] = data
        document = {
            "file_id": file_id,
            "file_unique_id": file_id,
            "file_name": filename,
            "mime_type": "application/json",
            "file_size": len(data),
        }
        message = self._message(chat_id, user_id, "private") | {
            "document": document,
            "caption": caption,
            "caption_entities": self._entities(caption),
        }
        return self._push(message)

    # -- what the test checks ---------------------------------------------------------------
    def replies_to(self, message_id: int) -> list[dict[str, Any]]:
        return [m for m in self.sent.values() if m.get("reply_to_message_id") == message_id]

    def actions(self, chat_id: int) -> list[str]:
        return [p["action"] for m, p in self.calls if m == "sendChatAction" and int(p["chat_id"]) == chat_id]


def _public(message: dict[str, Any]) -> dict[str, Any]:
    """The message as the Bot API returns it, without what the fake keeps for the tests."""
    return {
        k: v for k, v in message.items() if k not in {"edits", "photo_bytes", "document_bytes", "reply_to_message_id", "sent_at"}
    }
