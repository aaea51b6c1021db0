"""The one settings object, read from `QABOT_*` environment variables and `.env`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

PROJECT_DIR = Path(__file__).resolve().parent.parent
SAMPLE_DATA = PROJECT_DIR / "data" / "sample.json"
SAMPLE_HELDOUT = PROJECT_DIR / "data" / "sample.heldout.json"
BUNDLED_MODEL = "bundled"
IdList = Annotated[list[int], NoDecode]


class Settings(BaseSettings):
    """Everything qabot can be configured with; built once at the entry point and passed down."""

    model_config = SettingsConfigDict(env_prefix="QABOT_", env_file=".env", extra="ignore")

    home: Path = Field(
        default=Path.home() / ".qabot",
        description="Folder for model versions, dataset versions and the converted bundled model.",
    )
    base_model: str = Field(
        default=BUNDLED_MODEL,
        description="Base model to fine-tune: 'bundled' (offline SmolLM2-135M), a hub id such as "
        "'gpt2-medium', or a local folder.",
    )
    dataset: Path = Field(default=SAMPLE_DATA, description="Default training data (JSON or JSONL).")
    eval_data: Path | None = Field(
        default=SAMPLE_HELDOUT,
        description="Held-out paraphrases with key facts, used to evaluate the default dataset.",
    )
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="'auto' is bf16 on a GPU that supports it, float32 otherwise."
    )
    max_new_tokens: int | None = Field(
        default=None,
        ge=1,
        le=2048,
        description="Longest answer in tokens; unset: from the data (its longest answer plus a quarter, kept with the version).",
    )
    max_question_chars: int = Field(default=500, ge=1, description="Longest question accepted.")
    min_score: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Cosine floor below which a question is declined before the model; unset: the version's, calibrated "
        "on its dataset when trained.",
    )
    decline_confidence: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Probability a grounded model must give its decline's first token to decline; unset: the version's.",
    )
    offtopic_margin: float | None = Field(
        default=None,
        ge=0,
        description="How much nearer an off-topic message than the data a question may be before it is declined; unset: "
        "the version's, calibrated on its dataset when trained.",
    )
    complaint_margin: float | None = Field(
        default=None,
        ge=0,
        description="The same for a complaint that names what the data is about ('<product> sucks'); unset: the version's, "
        "calibrated on its dataset when trained (at least 0.15).",
    )
    decline_text: str = Field(
        default="I don't know that yet: it isn't in what I've been taught.",
        min_length=1,
        description="What people are told when a grounded model finds no answer in its notes.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "WARNING"

    redis_url: str = Field(default="redis://127.0.0.1:6379/0", description="Redis that carries the job queues.")
    answer_batch_size: int = Field(default=16, ge=1, le=256, description="Most questions answered in one batch.")
    answer_timeout: int = Field(default=60, ge=1, description="Seconds a question may take once a worker starts it.")
    answer_wait: int = Field(default=120, ge=1, description="Seconds a client waits for an answer before giving up.")
    train_timeout: int = Field(default=6 * 3600, ge=60, description="Seconds a fine-tune may run before it is killed.")
    train_start_wait: int = Field(
        default=600,
        ge=1,
        description="Seconds a queued fine-tune waits for a train worker to take it; then it is cancelled and the admin told.",
    )
    result_ttl: int = Field(default=3600, ge=1, description="Seconds answers and training results stay in Redis.")
    admin_wait: int = Field(default=20, ge=1, description="Seconds a bot waits for an admin job (/addqa, /models, ...).")
    answer_metrics_port: int | None = Field(
        default=None, ge=1, le=65535, description="Port of the answer worker's Prometheus /metrics (unset: none served)."
    )
    train_metrics_port: int | None = Field(
        default=None, ge=1, le=65535, description="Port of the train worker's Prometheus /metrics (unset: none served)."
    )
    metrics_host: str = Field(
        default="127.0.0.1", description="Address the workers' /metrics listen on (compose: 0.0.0.0 inside the container)."
    )
    keep_versions: int = Field(
        default=3, ge=0, description="Model versions kept besides the live one (the last ones live before it, for rollback)."
    )

    grounded: bool = Field(
        default=True,
        description="Fine-tune to answer from notes retrieved from the dataset and to decline when they lack the answer; "
        "false: the plain format (no notes, no declines).",
    )
    embedder: Literal["mpnet", "minilm"] = Field(
        default="mpnet",
        description="Sentence embedder that finds a new grounded version's notes: mpnet (all-mpnet-base-v2, better on "
        "users' wording) or minilm (all-MiniLM-L6-v2, 5x less compute to index). A version keeps the one it was trained with.",
    )
    train_epochs: float | None = Field(default=None, gt=0, description="Epochs for queued fine-tunes (default: TrainConfig's).")
    train_learning_rate: float | None = Field(default=None, gt=0, le=1, description="Learning rate for queued fine-tunes.")
    train_batch_size: int | None = Field(default=None, ge=1, description="Batch size for queued fine-tunes.")

    # -- bots (tokens are secrets: required only by the bot that uses them, never logged) ------
    telegram_token: SecretStr | None = Field(default=None, description="Telegram bot token from @BotFather.")
    telegram_admins: IdList = Field(default_factory=list, description="Telegram user ids allowed to retrain.")
    telegram_api_url: str = Field(default="https://api.telegram.org", description="Bot API server (a local one in tests).")
    telegram_webhook_url: str | None = Field(default=None, description="Public HTTPS URL: webhook mode instead of polling.")
    telegram_webhook_secret: SecretStr | None = Field(default=None, description="Secret token Telegram sends with each update.")
    telegram_webhook_listen: str = Field(default="0.0.0.0:8443", description="host:port the webhook server listens on.")
    discord_token: SecretStr | None = Field(default=None, description="Discord bot token.")
    discord_api_url: str | None = Field(
        default=None,
        description="Discord API base for a proxy or test server: REST <url>/api/v10, gateway <url>/gateway.",
    )
    discord_admins: IdList = Field(default_factory=list, description="Discord user ids allowed to retrain.")
    discord_admin_roles: IdList = Field(default_factory=list, description="Discord role ids whose members may retrain.")
    discord_channels: IdList = Field(default_factory=list, description="If set, answer only in these channels and their threads.")
    discord_guilds: IdList = Field(default_factory=list, description="If set, answer only in these servers.")
    rate_limit: int = Field(default=5, ge=1, description="Questions one person may ask per rate window.")
    rate_window: int = Field(default=60, ge=1, description="The rate window in seconds.")
    upload_max_bytes: int = Field(default=5 * 1024 * 1024, ge=1024, description="Largest dataset file accepted from chat.")
    inbox_size: int = Field(
        default=500, ge=1, description="Most open questions the unanswered inbox keeps; when full, the least recently asked goes."
    )
    inbox_notify_days: int = Field(
        default=7,
        ge=0,
        description="An admin's /answer goes to the chats where the question was asked within this many days (0: none).",
    )

    @field_validator(
        "telegram_admins", "discord_admins", "discord_admin_roles", "discord_channels", "discord_guilds", mode="before"
    )
    @classmethod
    def _id_list(cls, value: object) -> object:
        """Accept `1,2,3` as well as `[1, 2, 3]`."""
        if isinstance(value, str):
            text = value.strip().strip("[]")
            try:
                return [int(part) for part in text.replace(" ", "").split(",") if part]
            except ValueError as exc:
                raise ValueError(f"expected comma-separated numeric ids such as 123,456, got {value!r}") from exc
        return value

    @field_validator(
        "telegram_token",
        "discord_token",
        "telegram_webhook_secret",
        "telegram_webhook_url",
        "discord_api_url",
        "answer_metrics_port",
        "train_metrics_port",
        "max_new_tokens",
        "min_score",
        "decline_confidence",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        """An empty variable (as docker compose passes `${X:-}`) means not set."""
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("home", "dataset", "eval_data", mode="after")
    @classmethod
    def _expand_user(cls, value: Path | None) -> Path | None:
        return value.expanduser() if value is not None else None

    @field_validator("base_model")
    @classmethod
    def _base_model_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("QABOT_BASE_MODEL is empty: set it to 'bundled', a hub id or a folder")
        return value.strip()

    @model_validator(mode="after")
    def _metrics_ports_differ(self) -> Settings:
        if self.answer_metrics_port is not None and self.answer_metrics_port == self.train_metrics_port:
            raise ValueError(
                f"QABOT_ANSWER_METRICS_PORT and QABOT_TRAIN_METRICS_PORT are both {self.answer_metrics_port}: "
                "give each worker its own port (for instance 9108 and 9109)"
            )
        return self

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def cache_dir(self) -> Path:
        return self.home / "cache"
