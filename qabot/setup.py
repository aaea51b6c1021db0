"""What every `qabot` command shares: the --debug state, the consoles, settings, logging that never shows a secret."""

from __future__ import annotations

import logging
import os
import traceback
from urllib.parse import urlsplit

from rich.console import Console
from rich.markup import escape

from qabot.settings import Settings

logger = logging.getLogger(__name__)
console = Console()
err = Console(stderr=True, soft_wrap=True)
MASK = "***"


class State:
    debug = False
    secrets: tuple[str, ...] = ()


def secret_values(settings: Settings) -> tuple[str, ...]:
    """Every secret the settings hold (tokens, webhook secret, Redis password), plus the parts of a token."""
    found = []
    for value in (settings.telegram_token, settings.discord_token, settings.telegram_webhook_secret):
        if value is not None and value.get_secret_value():
            secret = value.get_secret_value()
            found.append(secret)
            found.extend(part for part in secret.split(":") if len(part) >= 8)  # Telegram's "<id>:<secret>"
    password = urlsplit(settings.redis_url).password
    if password:
        found.append(password)
    return tuple(sorted(set(found), key=len, reverse=True))


def scrub(text: str, secrets: tuple[str, ...] | None = None) -> str:
    """`text` with every known secret replaced by ***."""
    for secret in State.secrets if secrets is None else secrets:
        text = text.replace(secret, MASK)
    return text


class ScrubbingFormatter(logging.Formatter):
    """Formats as usual (tracebacks included), then masks every secret."""

    def format(self, record: logging.LogRecord) -> str:
        return scrub(super().format(record))


def settings(engine: bool = True) -> Settings:
    """Build the settings and logging; `engine=False` keeps torch out of this process (the train worker's parent)."""
    settings = Settings()
    State.secrets = secret_values(settings)
    level = logging.DEBUG if State.debug else getattr(logging, settings.log_level)
    handler = logging.StreamHandler()
    handler.setFormatter(ScrubbingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])
    if engine and not State.debug:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
    return settings


def report_error(exc: Exception) -> int:
    """Print one line for the user, every secret masked; return the exit code."""
    from pydantic import ValidationError

    from qabot.errors import QabotError

    if isinstance(exc, QabotError):
        _print_error(scrub(str(exc)))
        return 1
    if isinstance(exc, ValidationError):  # bad settings
        for problem in exc.errors():
            _print_error(_setting_problem(problem))
        return 2
    if isinstance(exc, ValueError):  # bad hyper-parameters, missing tokens
        _print_error(scrub(str(exc)))
        return 2
    logger.debug("unexpected failure", exc_info=True)  # the edge: log it, show one line
    _print_error(f"unexpected {type(exc).__name__}: {scrub(str(exc))}{save_traceback()}")
    return 1


def _print_error(text: str) -> None:
    """One error line on stderr; its text is the data's or a library's, never markup (a "[/b]" in it stopped Rich)."""
    err.print(f"[red]error:[/] {escape(text)}", highlight=False)


def _setting_problem(problem: dict) -> str:
    """One invalid setting, for the user. Its value is shown only for a setting that holds no secret: a check across
    settings (no field of its own) gets the whole raw settings as its input, tokens and the Redis password included,
    and none of them are masked yet (State.secrets is filled once the settings load)."""
    if not problem["loc"]:
        return f"invalid settings: {problem['msg']}"
    field = str(problem["loc"][0])
    name = "QABOT_" + "_".join(str(part) for part in problem["loc"]).upper()
    info = Settings.model_fields.get(field)
    secret = field == "redis_url" or (info is not None and "SecretStr" in str(info.annotation))
    shown = "" if secret else f"={problem.get('input')!r}"
    return f"invalid setting {name}{shown}: {problem['msg']}"


def save_traceback() -> str:
    """Keep the traceback, secrets masked, in a file only its owner reads; the user sees one line."""
    try:
        path = Settings().home / "last-error.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)  # an older file may have been created readable by all
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(scrub(traceback.format_exc()))
        return f" (details in {path}; --debug shows them)"
    except Exception:  # noqa: BLE001 - never fail while reporting a failure
        return " (run with --debug for details)"
