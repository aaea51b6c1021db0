"""Deployment: the compose file agrees with the CLI and the settings; `qabot dev` runs the stack locally."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import typer
import yaml
from redis import Redis

from qabot.cli import app
from qabot.settings import Settings
from tests.conftest import _free_port, qabot_env
from tests.test_queue import QUESTIONS, make_settings
from worker.client import QueueClient

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SETTING_VARS = {f"QABOT_{name.upper()}" for name in Settings.model_fields}


def cli_has(argv: list[str]) -> bool:
    command = typer.main.get_command(app)
    for word in argv:
        if word.startswith("-"):
            option_names = {n for p in command.params for n in getattr(p, "opts", [])}
            if word.split("=")[0] not in option_names:
                return False
            continue
        if word not in getattr(command, "commands", {}):
            return False
        command = command.commands[word]
    return not hasattr(command, "commands")


def as_list(command) -> list[str]:
    return command.split() if isinstance(command, str) else list(command)


def test_every_qabot_service_runs_an_existing_cli_command():
    commands = {name: as_list(svc["command"]) for name, svc in COMPOSE["services"].items() if "command" in svc}
    qabot = {name: argv for name, argv in commands.items() if argv[0] == "qabot"}
    assert {"answer-worker", "train-worker"} <= set(qabot)
    for name, argv in qabot.items():
        assert cli_has(argv[1:]), f"{name}: `{' '.join(argv)}` is not a qabot command"
    for name, svc in COMPOSE["services"].items():
        check = svc.get("healthcheck", {}).get("test")
        if check and as_list(check)[1:2] == ["qabot"]:
            assert cli_has(as_list(check)[2:]), f"{name}: health check `{check}` is not a qabot command"


def test_every_variable_set_is_a_known_setting():
    for name, svc in COMPOSE["services"].items():
        env = svc.get("environment", {})
        keys = env.keys() if isinstance(env, dict) else [e.split("=", 1)[0] for e in env]
        for key in keys:
            if key.startswith("QABOT_"):
                assert key in SETTING_VARS, f"{name}: {key} is not a setting (known: {sorted(SETTING_VARS)})"


def test_workers_share_the_models_volume_at_qabot_home_and_redis_persists():
    declared = set(COMPOSE.get("volumes", {}))
    mounts = {}
    for name, svc in COMPOSE["services"].items():
        for volume in svc.get("volumes", []):
            source, target = volume.split(":")[:2]
            if not source.startswith((".", "/")):
                assert source in declared, f"{name}: volume {source} is not declared"
            mounts.setdefault(name, {})[target] = source
    homes = {}
    for name in ("answer-worker", "train-worker"):
        env = COMPOSE["services"][name]["environment"]
        home = env["QABOT_HOME"]
        assert home in mounts[name], f"{name}: QABOT_HOME {home} is not on a volume"
        homes[name] = mounts[name][home]
        assert env["QABOT_REDIS_URL"].startswith("redis://redis:")
        assert COMPOSE["services"][name]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert homes["answer-worker"] == homes["train-worker"]
    redis = COMPOSE["services"]["redis"]
    assert "--appendonly" in as_list(redis["command"]) and "/data" in mounts["redis"]
    assert "rq-dashboard" in COMPOSE["services"] and COMPOSE["services"]["rq-dashboard"]["profiles"] == ["dashboard"]


def test_qabot_dev_starts_redis_and_workers_and_stops_them(home, tmp_path):
    port = _free_port()
    url = f"redis://127.0.0.1:{port}/0"
    env = qabot_env({"QABOT_HOME": str(home), "QABOT_REDIS_URL": url, "QABOT_DEVICE": "cpu", "QABOT_MAX_NEW_TOKENS": "24"})
    proc = subprocess.Popen(
        [sys.executable, "-m", "qabot", "dev"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        connection = Redis.from_url(url)
        for _ in range(100):
            try:
                connection.ping()
                break
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.1)
        client = QueueClient(make_settings(home, url, answer_wait=60))
        assert client.ask_sync(QUESTIONS[0]).version == "v0001"
    finally:
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, output
    assert "Redis redis://127.0.0.1" in output and "(started here)" in output and "stopping" in output
    try:
        Redis.from_url(url, socket_connect_timeout=1).ping()
        still_up = True
    except Exception:  # noqa: BLE001 - refused: stopped as it should be
        still_up = False
    assert not still_up


def test_bot_side_imports_no_torch():
    code = (
        "import sys; import bots.core, bots.telegram_bot, bots.discord_bot, worker.client, worker.status, qabot.cli; "
        "heavy = {'torch', 'transformers'} & set(sys.modules); assert not heavy, heavy"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_bots_run_from_their_own_image_with_the_shared_models_volume():
    bots = {name: svc for name, svc in COMPOSE["services"].items() if as_list(svc.get("command", ["x"]))[:2] == ["qabot", "bot"]}
    assert {"telegram-bot", "discord-bot"} <= set(bots)
    for name, svc in bots.items():
        assert svc["build"]["dockerfile"] == "docker/bots.Dockerfile", name
        assert "models:/var/lib/qabot" in svc["volumes"] and svc["environment"]["QABOT_HOME"] == "/var/lib/qabot"
        assert "deploy" not in svc  # no GPU for bots
    dockerfile = (ROOT / "docker" / "bots.Dockerfile").read_text()
    assert '".[bots]"' in dockerfile and "torch" not in dockerfile.split("RUN", 1)[1]


def test_rate_limiter_counts_per_person_and_forgets_quiet_people():
    from bots.core import RateLimiter

    now = [0.0]
    limiter = RateLimiter(limit=2, window=60, clock=lambda: now[0])
    assert [limiter.wait_for("a"), limiter.wait_for("a"), limiter.wait_for("b")] == [0.0, 0.0, 0.0]
    assert limiter.wait_for("a") == 60.0
    now[0] = 30.0
    assert limiter.wait_for("a") == 30.0
    now[0] = 61.0
    assert limiter.wait_for("a") == 0.0
    for i in range(10_001):
        limiter.wait_for(f"user{i}")
    now[0] = 200.0
    limiter.wait_for("late")
    assert len(limiter.asked) == 1
