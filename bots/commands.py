"""The one table of chat commands: /help, Telegram's command menus, Discord's slash commands and the README's
command table are all made from it, so they cannot drift apart."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    """A chat command: its name, whether only admins may use it, its arguments and one line of help."""

    name: str
    admin: bool
    usage: str
    help: str  # at most 100 characters: Discord's limit for a command's description


COMMANDS: tuple[Command, ...] = (
    Command("ask", False, "<question>", "Ask the bot a question (or mention it, or reply to one of its messages)."),
    Command("help", False, "", "What this bot does and how to ask it."),
    Command("retrain", True, "[attach a JSON dataset] [replace] [force]", "Retrain, optionally on an attached dataset."),
    Command("addqa", True, "question | answer", "Add a question and answer; a known question takes the new answer."),
    Command("find", True, "<words>", "The pairs nearest to the words, numbered, with where each came from."),
    Command("export", True, "", "The current dataset as a JSON file to edit and send back with /retrain replace."),
    Command("forget", True, "<question or number>", "Remove a pair (its question, or its number from /find); undoable."),
    Command("undo", True, "", "Take back the last /addqa, /answer or /forget."),
    Command("status", True, "", "Live model, datasets, queues and training."),
    Command("models", True, "", "Model versions, the live one marked."),
    Command("rollback", True, "[version]", "Go back to the previous (or a named) version and its dataset."),
    Command("unanswered", True, "[page]", "Questions the bot could not answer, most asked first, other wordings grouped."),
    Command("answer", True, "<id> <answer>", "Answer an unanswered question; it joins the dataset."),
    Command("dismiss", True, "<id>", "Drop an unanswered question without answering it."),
)
PUBLIC = tuple(c for c in COMMANDS if not c.admin)
ADMIN = tuple(c for c in COMMANDS if c.admin)
BY_NAME = {c.name: c for c in COMMANDS}

INTRO = "I answer questions about our community's world, trained on its own questions and answers."


def _line(command: Command) -> str:
    return f"/{command.name}{' ' + command.usage if command.usage else ''}: {command.help}"


def help_text() -> str:
    """What everyone reads on /help and /start."""
    return "\n".join([INTRO, *(_line(c) for c in PUBLIC)])


def admin_help() -> str:
    """What admins read below it. Uploads: attach the file to /retrain (the caption on Telegram)."""
    return "\n".join(["Admins:", *(_line(c) for c in ADMIN)])


def markdown_table() -> str:
    """The README's table of commands."""
    rows = ["| Command | Who | What it does |", "|---|---|---|"]
    rows += [
        f"| `/{c.name}{' ' + c.usage if c.usage else ''}` | {'admins' if c.admin else 'everyone'} | {c.help} |" for c in COMMANDS
    ]
    return "\n".join(rows)
