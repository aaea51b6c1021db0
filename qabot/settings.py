"""The one settings object, read from `QABOT_*` environment variables and `.env`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_DIR = Path(__file__).resolve().parent.parent
SAMPLE_DATA = PROJECT_DIR / "data" / "sample.json"
SAMPLE_HELDOUT = PROJECT_DIR / "data" / "heldout.json"
BUNDLED_MODEL = "bundled"


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
    max_new_tokens: int = Field(default=64, ge=1, le=2048, description="Longest answer in tokens.")
    max_question_chars: int = Field(default=500, ge=1, description="Longest question accepted.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "WARNING"

    redis_url: str = Field(default="redis://127.0.0.1:6379/0", description="Redis that carries the job queues.")
    answer_batch_size: int = Field(default=16, ge=1, le=256, description="Most questions answered in one batch.")
    answer_timeout: int = Field(default=60, ge=1, description="Seconds a question may take once a worker starts it.")
    answer_wait: int = Field(default=120, ge=1, description="Seconds a client waits for an answer before giving up.")
    train_timeout: int = Field(default=6 * 3600, ge=60, description="Seconds a fine-tune may run before it is killed.")
    result_ttl: int = Field(default=3600, ge=1, description="Seconds answers and training results stay in Redis.")

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

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def cache_dir(self) -> Path:
        return self.home / "cache"
