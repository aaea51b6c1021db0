"""Deployment: the compose file agrees with the CLI, the settings and the design; `qabot dev` runs the stack locally."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import typer
import yaml
from redis import Redis
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, RedisError
from redis.retry import Retry
from rq import Queue, Worker

from bots.core import BotCore
from qabot import health
from qabot.cli import app
from qabot.settings import Settings
from tests.conftest import _free_port, qabot_env, qabot_workers, wait_until
from tests.test_queue import QUESTIONS, make_settings
from worker.client import QueueClient

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
SETTING_VARS = {f"QABOT_{name.upper()}" for name in Settings.model_fields}
WORKERS = ("answer-worker", "train-worker", "admin-worker")
BOTS = ("telegram-bot", "discord-bot")
PASSWORD_URL = re.compile(r"redis://:\$\{REDIS_PASSWORD(:\?[^}]*)?\}@redis:6379/\d+")


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


def environment(svc: dict) -> dict[str, str]:
    env = svc.get("environment", {})
    return dict(env) if isinstance(env, dict) else dict(e.split("=", 1) for e in env)


def env_files(svc: dict) -> list[tuple[str, bool]]:
    """(path, required) of each env_file entry, short or long form."""
    value = svc.get("env_file", [])
    items = [value] if isinstance(value, str | dict) else value
    return [(i, True) if isinstance(i, str) else (i["path"], i.get("required", True)) for i in items]


def qabot_services() -> dict[str, dict]:
    return {name: svc for name, svc in SERVICES.items() if as_list(svc.get("command", ["-"]))[0] == "qabot"}


def test_every_qabot_service_runs_an_existing_cli_command():
    qabot = {name: as_list(svc["command"]) for name, svc in qabot_services().items()}
    assert set(WORKERS) | set(BOTS) <= set(qabot)
    for name, argv in qabot.items():
        assert cli_has(argv[1:]), f"{name}: `{' '.join(argv)}` is not a qabot command"
    for name, svc in SERVICES.items():
        check = svc.get("healthcheck", {}).get("test")
        if check and as_list(check)[1:2] == ["qabot"]:
            assert cli_has(as_list(check)[2:]), f"{name}: health check `{check}` is not a qabot command"


def test_every_variable_set_is_a_known_setting():
    for name, svc in SERVICES.items():
        for key in environment(svc):
            if key.startswith("QABOT_"):
                assert key in SETTING_VARS, f"{name}: {key} is not a setting (known: {sorted(SETTING_VARS)})"


def test_every_qabot_service_reads_the_env_file_and_the_dashboard_does_not():
    for name in qabot_services():
        assert (".env", False) in env_files(SERVICES[name]), f"{name}: needs env_file [{{path: .env, required: false}}]"
    # rq-dashboard is a third-party image: it gets its Redis URL, not the bot tokens.
    assert not env_files(SERVICES["rq-dashboard"])


def test_env_example_names_every_setting_and_nothing_else():
    text = (ROOT / ".env.example").read_text()
    names = re.findall(r"^#?\s*(QABOT_[A-Z0-9_]+)=", text, flags=re.MULTILINE)
    assert len(names) == len(set(names)), "a setting is listed twice"
    assert set(names) == SETTING_VARS, (
        f"undocumented: {sorted(SETTING_VARS - set(names))}; not settings: {sorted(set(names) - SETTING_VARS)}"
    )
    assert re.search(r"^REDIS_PASSWORD=$", text, flags=re.MULTILINE), "compose needs REDIS_PASSWORD"


def redis_script() -> str:
    """The shell script of the redis service's command, as the container's shell gets it (compose makes `$$` a `$`)."""
    argv = as_list(SERVICES["redis"]["command"])
    assert argv[:2] == ["sh", "-c"] and len(argv) == 3, f"redis: expected `sh -c SCRIPT`, got {argv}"
    return argv[2].replace("$$", "$")


def test_redis_needs_a_password_never_evicts_and_persists():
    redis = SERVICES["redis"]
    env = environment(redis)
    assert re.fullmatch(r"\$\{REDIS_PASSWORD:\?[^}]+\}", env["REDIS_PASSWORD"]), "the password must be required"
    assert re.fullmatch(r"\$\{REDIS_MAXMEMORY:-\w+\}", env["REDIS_MAXMEMORY"]), "a memory limit, with a default"
    config = redis_script().split("<<EOF\n", 1)[1].split("\nEOF", 1)[0].splitlines()
    assert config == [
        "requirepass $REDIS_PASSWORD",
        "maxmemory $REDIS_MAXMEMORY",
        "maxmemory-policy noeviction",
        "appendonly yes",
        'save ""',
    ]
    assert "redis-data:/data" in redis["volumes"]
    assert env["REDISCLI_AUTH"] == env["REDIS_PASSWORD"], "the health check must authenticate"
    assert re.search(r"^# REDIS_MAXMEMORY=\w+$", (ROOT / ".env.example").read_text(), flags=re.MULTILINE)
    urls = {name: environment(svc)["QABOT_REDIS_URL"] for name, svc in SERVICES.items() if "QABOT_REDIS_URL" in environment(svc)}
    assert set(qabot_services()) <= set(urls)
    urls["rq-dashboard"] = environment(SERVICES["rq-dashboard"])["RQ_DASHBOARD_REDIS_URL"]
    for name, url in urls.items():
        assert PASSWORD_URL.fullmatch(url), f"{name}: {url} does not carry the password"
    assert SERVICES["rq-dashboard"]["profiles"] == ["dashboard"]


def test_the_redis_command_caps_memory_and_keeps_the_password_off_every_command_line(tmp_path):
    """The compose command's own script, run with the local redis-server: the image's entrypoint (which only drops to
    the redis user) is left out, a free port and tmp_path added; the default REDIS_MAXMEMORY as compose resolves it.
    Redis rewrites its process title once started, hiding its arguments; `--set-proc-title no` keeps /proc showing the
    argv the script gave it, as `ps` shows it until that rewrite (and always in `docker inspect`)."""
    entrypoint = "exec docker-entrypoint.sh redis-server -"
    assert "${" not in "".join(as_list(SERVICES["redis"]["command"])), "compose would put a value into the argv"
    script = redis_script()
    assert script.count(entrypoint) == 1, script
    port, password = _free_port(), secrets.token_hex(16)
    local = f"exec redis-server - --port {port} --bind 127.0.0.1 --dir {tmp_path} --set-proc-title no"
    script = script.replace(entrypoint, local)
    maxmemory = re.fullmatch(r"\$\{REDIS_MAXMEMORY:-(\w+)\}", environment(SERVICES["redis"])["REDIS_MAXMEMORY"])[1]
    env = {"PATH": os.environ["PATH"], "REDIS_PASSWORD": password, "REDIS_MAXMEMORY": maxmemory}
    proc = subprocess.Popen(["sh", "-c", script], env=env, cwd=tmp_path, stdout=subprocess.DEVNULL)
    try:
        client = Redis(port=port, password=password, socket_connect_timeout=1, decode_responses=True)

        def answers() -> bool:
            try:
                return client.ping()
            except RedisError:
                return False

        wait_until(answers, 10, "the compose redis command answers PING")
        assert client.info("server")["process_id"] == proc.pid, "sh must exec redis-server"
        config = client.config_get("*")
        assert int(config["maxmemory"]) == 1024**3 and maxmemory == "1gb"
        assert (config["maxmemory-policy"], config["appendonly"], config["save"]) == ("noeviction", "yes", "")
        with pytest.raises(AuthenticationError):
            Redis(port=port, socket_connect_timeout=1, retry=Retry(NoBackoff(), 0)).ping()
        commands = {}
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            with contextlib.suppress(OSError):
                commands[cmdline.parent.name] = cmdline.read_bytes()
        assert b"redis-server" in commands[str(proc.pid)]
        assert [pid for pid, argv in commands.items() if password.encode() in argv] == []
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_workers_share_the_models_volume_at_qabot_home():
    declared = set(COMPOSE.get("volumes", {}))
    stores = {}
    for name in WORKERS:
        svc = SERVICES[name]
        mounts = {}
        for volume in svc.get("volumes", []):
            source, target = volume.split(":")[:2]
            assert source in declared, f"{name}: volume {source} is not declared"
            mounts[target] = source
        home = environment(svc)["QABOT_HOME"]
        assert home in mounts, f"{name}: QABOT_HOME {home} is not on a volume"
        stores[name] = mounts[home]
        gpu = svc.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
        assert [d["capabilities"] for d in gpu] == ([] if name == "admin-worker" else [["gpu"]]), name
    assert set(stores.values()) == {"models"}


def test_answer_worker_is_healthy_only_with_a_model_loaded(redis_url, tmp_path):
    """Compose's check fails with no answer worker, and with one registered on this host that has no model loaded yet
    (a real rq worker record, this process's). The healthy side, a worker serving a model, is checked in
    tests/test_faults_answer.py."""
    check = SERVICES["answer-worker"]["healthcheck"]
    assert as_list(check["test"]) == ["CMD", "qabot", "health", "answer"]
    unhealthy = f"no answer worker on {socket.gethostname()} has a model loaded"
    alone = qabot_health(["answer"], redis_url, tmp_path)
    assert alone.returncode == 1 and unhealthy in alone.stderr, alone.stderr
    loading = Worker([Queue("answer", connection=Redis.from_url(redis_url))], connection=Redis.from_url(redis_url))
    loading.register_birth()
    try:
        assert [w.pid for w in Worker.all(queue=loading.queues[0])] == [os.getpid()]
        without_model = qabot_health(["answer"], redis_url, tmp_path)
        assert without_model.returncode == 1 and unhealthy in without_model.stderr, without_model.stderr
    finally:
        loading.register_death()


def test_workers_serve_metrics_each_on_its_own_port_published_on_loopback_only():
    ports = {}
    for name, variable in (("answer-worker", "QABOT_ANSWER_METRICS_PORT"), ("train-worker", "QABOT_TRAIN_METRICS_PORT")):
        env = environment(SERVICES[name])
        port = ports[name] = int(env[variable])
        assert env["QABOT_METRICS_HOST"] == "0.0.0.0", f"{name}: listen on all of the container's interfaces"
        assert f"127.0.0.1:{port}:{port}" in SERVICES[name]["ports"], f"{name}: publish {port} on 127.0.0.1"
        Settings(**{variable.removeprefix("QABOT_").lower(): port})  # a valid setting
    assert len(set(ports.values())) == 2, ports
    for name, svc in SERVICES.items():
        for published in svc.get("ports", []):
            assert str(published).startswith("127.0.0.1:"), f"{name}: {published} is reachable from other hosts"


def test_admin_worker_runs_without_gpu_from_the_worker_image():
    admin = SERVICES["admin-worker"]
    assert as_list(admin["command"]) == ["qabot", "worker", "admin"]
    assert cli_has(["worker", "admin"]), "`qabot worker admin` does not exist yet"
    assert admin["image"] == SERVICES["answer-worker"]["image"] and "deploy" not in admin and "healthcheck" in admin


def test_bots_need_only_redis():
    for name in BOTS:
        svc = SERVICES[name]
        assert svc["build"]["dockerfile"] == "docker/bots.Dockerfile", name
        assert not svc.get("volumes"), f"{name}: bots get no volume"
        assert "QABOT_HOME" not in environment(svc), f"{name}: bots have no store"
        assert "deploy" not in svc, f"{name}: bots get no GPU"
    dockerfile = (ROOT / "docker" / "bots.Dockerfile").read_text()
    copied = [line.split()[1:-1] for line in dockerfile.splitlines() if line.startswith("COPY")]
    sources = {src.rstrip("/") for line in copied for src in line}
    assert {"qabot", "worker", "bots"} <= sources and not {"engine", "data", "."} & sources, sources
    assert '".[bots]"' in dockerfile and "torch" not in dockerfile.split("RUN", 1)[1]


def test_every_service_but_redis_and_the_dashboard_checks_its_own_health():
    """`qabot status --quiet` proves only that Redis answers: each qabot service checks itself (`qabot health ...`)."""
    for name in set(SERVICES) - {"redis", "rq-dashboard"}:
        check = as_list(SERVICES[name].get("healthcheck", {}).get("test", ["-"]))
        assert check[:3] == ["CMD", "qabot", "health"], f"{name}: health check {check} is not a `qabot health` command"
        assert cli_has(check[2:]), f"{name}: `{' '.join(check[1:])}` is not a qabot command"
        assert all(word in name for word in check[3:]), f"{name}: checks another service ({check[3:]})"


def qabot_health(args: list[str], redis_url: str, home: Path, *, engine: bool = True) -> subprocess.CompletedProcess:
    """`qabot health ARGS` in a fresh process, as compose runs it; `engine=False` as on the bots' image (no engine/,
    no torch)."""
    block = "" if engine else "sys.modules.update(engine=None, torch=None, transformers=None); "
    code = f"import sys; {block}sys.argv = ['qabot', 'health', *{args!r}]; from qabot.cli import main; main()"
    env = qabot_env({"QABOT_REDIS_URL": redis_url, "QABOT_HOME": str(home)})
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)


def test_a_bot_is_healthy_only_once_it_beats_without_the_engine(redis_url, tmp_path):
    """The bots' image has no engine/ and no torch: their health checks run without them, fail before a beat and pass
    after one."""
    connection = Redis.from_url(redis_url)
    for name in BOTS:
        argv = as_list(SERVICES[name]["healthcheck"]["test"])[2:]
        platform = argv[-1]
        before = qabot_health(argv[1:], redis_url, tmp_path, engine=False)
        assert before.returncode == 1, before.stderr
        assert f"the {platform} bot on {socket.gethostname()} has not said it is alive" in before.stderr
        assert len(before.stderr.strip().splitlines()) == 1, before.stderr
        health.beat(connection, health.bot_service(platform), health.BOT_BEAT_TTL_S)
        after = qabot_health(argv[1:], redis_url, tmp_path, engine=False)
        assert after.returncode == 0, f"`{' '.join(argv)}` without engine/: {after.stderr[-2000:]}"
    assert 0 < connection.ttl(health.key(health.bot_service("telegram"))) <= health.BOT_BEAT_TTL_S


async def test_the_bots_delivery_loop_beats_each_round(redis_url, tmp_path):
    """A real BotCore's keep_delivering, against the test Redis: its first round makes `qabot health bot` pass."""
    assert qabot_health(["bot", "discord"], redis_url, tmp_path).returncode == 1
    settings = make_settings(tmp_path, redis_url)
    core = BotCore(settings, QueueClient(settings))

    async def deliver(reply_to, outcome) -> None:
        raise AssertionError("nothing to deliver")

    connection = Redis.from_url(redis_url)
    task = asyncio.create_task(core.keep_delivering("discord", deliver))
    try:
        deadline = time.monotonic() + 5
        while not health.alive(connection, health.bot_service("discord")) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    beats = {platform: health.alive(connection, health.bot_service(platform)) for platform in ("discord", "telegram")}
    assert beats == {"discord": True, "telegram": False}
    done = await asyncio.to_thread(qabot_health, ["bot", "discord"], redis_url, tmp_path)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("kind", ["admin", "train"])
def test_a_worker_is_healthy_only_while_its_process_runs(kind, redis_url, tmp_path):
    """`qabot health admin|train`: 1 with no worker, 0 while a real `qabot worker ...` runs on this host, 1 again once
    it is killed outright (SIGKILL), although rq still lists its record."""
    queue = Queue(kind, connection=Redis.from_url(redis_url))
    before = qabot_health([kind], redis_url, tmp_path)
    assert before.returncode == 1 and f"no {kind} worker runs on {socket.gethostname()}" in before.stderr, before.stderr
    env = qabot_env({"QABOT_REDIS_URL": redis_url, "QABOT_HOME": str(tmp_path)})
    with qabot_workers(env, tmp_path, (kind,)) as (proc,):
        log = tmp_path / f"{kind}-worker.log"
        wait_until(lambda: [w for w in Worker.all(queue=queue) if w.pid == proc.pid], 20, f"{kind} worker registered", log)
        running = qabot_health([kind], redis_url, tmp_path)
        assert running.returncode == 0, running.stderr
        proc.kill()
        proc.wait(timeout=10)
        assert [w.pid for w in Worker.all(queue=queue)] == [proc.pid], "rq keeps a killed worker's record for minutes"
        killed = qabot_health([kind], redis_url, tmp_path)
        assert killed.returncode == 1 and f"no {kind} worker runs" in killed.stderr, killed.stderr


def start_dev(home: Path, *, ignore_sigint: bool = False) -> tuple[subprocess.Popen, str, str]:
    """`qabot dev` on a free port; returns once it says that Ctrl-C stops everything, with what it printed so far."""
    url = f"redis://127.0.0.1:{_free_port()}/0"
    env = qabot_env({"QABOT_HOME": str(home), "QABOT_REDIS_URL": url, "QABOT_DEVICE": "cpu", "QABOT_MAX_NEW_TOKENS": "24"})
    env["PYTHONUNBUFFERED"] = "1"
    # What a shell does to a background job (`make test &`): SIGINT ignored, so Python installs no handler for it.
    ignore = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if ignore_sigint else None
    proc = subprocess.Popen(
        [sys.executable, "-m", "qabot", "dev"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=ignore,
    )
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:  # ends at EOF if it exits first
        lines.append(line)
        if "Ctrl-C stops everything" in line:
            break
    return proc, url, "".join(lines)


def interrupt(proc: subprocess.Popen) -> str:
    """Ctrl-C; the rest of the output once it has stopped (a test failure if it does not within a minute)."""
    proc.send_signal(signal.SIGINT)
    try:
        return proc.communicate(timeout=60)[0]
    except subprocess.TimeoutExpired:
        proc.terminate()
        output = proc.communicate(timeout=60)[0]
        pytest.fail(f"qabot dev did not stop on SIGINT:\n{output[-3000:]}")


def assert_all_stopped(proc: subprocess.Popen, output: str, url: str) -> None:
    assert proc.returncode == 0, output
    assert "Redis redis://127.0.0.1" in output and "(started here)" in output and "stopping" in output
    pids = [int(pid) for pid in re.findall(r"\(pid (\d+)\)", output)]
    assert pids, output
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    try:
        Redis.from_url(url, socket_connect_timeout=1).ping()
        still_up = True
    except Exception:  # noqa: BLE001 - refused: stopped as it should be
        still_up = False
    assert not still_up


def test_qabot_dev_starts_redis_and_workers_and_stops_them(home):
    proc, url, output = start_dev(home)
    try:
        client = QueueClient(make_settings(home, url, answer_wait=60))
        assert client.ask_sync(QUESTIONS[0]).version == "v0001"
    finally:
        output += interrupt(proc)
    assert_all_stopped(proc, output, url)
    assert "worker admin (pid" in output


def test_qabot_dev_stops_on_ctrl_c_when_started_with_sigint_ignored(home):
    proc, url, output = start_dev(home, ignore_sigint=True)
    output += interrupt(proc)
    assert_all_stopped(proc, output, url)


BLOCK_ENGINE = """
import sys
class Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"engine", "torch", "transformers", "tokenizers"}:
            raise ImportError(f"{name} is not installed on a bot host")
sys.meta_path.insert(0, Blocked())
"""


def test_bots_import_nothing_of_the_engine():
    """As on a bot host without the engine extra: the bots, the queue client and the CLI's bot side still import."""
    code = BLOCK_ENGINE + "import bots.core, bots.telegram_bot, bots.discord_bot, worker.client, worker.status, qabot.cli"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for path in (ROOT / "bots").glob("*.py"):
        for line in path.read_text().splitlines():
            assert not line.startswith(("from engine", "import engine")), f"{path.name}: {line}"


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


def test_the_readme_lists_the_commands_of_the_one_command_table():
    from bots.commands import COMMANDS, admin_help, help_text, markdown_table
    from bots.core import ADMIN_HELP, HELP_TEXT

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    listed = readme.split("<!-- commands: made from bots/commands.py -->\n", 1)[1].split("\n<!-- /commands -->", 1)[0]
    assert listed == markdown_table()
    assert (HELP_TEXT, ADMIN_HELP) == (help_text(), admin_help())
    assert all(f"/{c.name}" in (ADMIN_HELP if c.admin else HELP_TEXT) for c in COMMANDS)
    assert all(len(c.help) <= 100 for c in COMMANDS)  # Discord's limit for a description


WORKER_SIDE = ("worker.train_worker", "worker.answer_worker", "worker.liveness", "worker.metrics", "worker.admin")
WORKER_SIDE += ("worker.inbox_jobs", "worker.lookup", "worker.training", "worker.dev", "prometheus_client", "torch")
WORKER_SIDE += ("transformers", "engine", "prctl", "worker.model_keeper")


def modules_loaded_by(code: str) -> list[str]:
    """Run `code` in a fresh interpreter (as a host starts) and return its output's lines; the last one it printed is
    expected to be the names of the modules it loaded."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=Path.cwd())
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_the_bots_load_the_client_and_nothing_of_the_workers():
    """A bot host loads the client modules only: no worker module, no rq Worker subclass of ours, no metrics registry,
    no torch (issue 16). Checked in a fresh interpreter, as a bot host starts."""
    code = (
        "import sys, rq, bots.telegram_bot, bots.discord_bot, bots.core\n"
        "def subclasses(c): return [s for d in c.__subclasses__() for s in (d, *subclasses(d))]\n"
        "ours = sorted({f'{c.__module__}.{c.__name__}' for c in subclasses(rq.Worker) if not c.__module__.startswith('rq')})\n"
        "print(' '.join(sorted(sys.modules))); print(' '.join(ours) or '-')\n"
    )
    modules, workers = modules_loaded_by(code)
    loaded = [m for m in modules.split() if m in WORKER_SIDE or m.split(".")[0] in WORKER_SIDE]
    assert loaded == [] and workers == "-", (loaded, workers)


def test_an_answer_worker_loads_nothing_of_fine_tuning():
    """What answers (the answer worker's model keeper, `qabot chat`, `qabot eval`) loads the serving half of the
    engine: no Trainer, no fine-tuning module, no training pipeline. Checked in a fresh interpreter, where a keeper
    loads a version (there is none: it gets as far as looking for it)."""
    code = (
        "import sys, tempfile, pathlib, worker.answer_worker\n"
        "from engine.versions import ModelStore\n"
        "from qabot.settings import Settings\n"
        "from worker.model_keeper import ModelKeeper\n"
        "keeper = ModelKeeper()\n"
        "keeper.settings, keeper.store = Settings(), ModelStore(pathlib.Path(tempfile.mkdtemp()) / 'models')\n"
        "try:\n    keeper._load('v0001')\nexcept Exception:\n    pass\n"
        "print(' '.join(sorted(sys.modules)))\n"
    )
    loaded = set(modules_loaded_by(code)[-1].split())
    training = {"transformers.trainer", "engine.training", "engine.pipeline", "engine.callbacks", "peft"}
    assert training.isdisjoint(loaded), sorted(training & loaded)


# rq attributes and modules that rq's documentation does not describe: only worker/rq_seam.py may use them
RQ_UNDOCUMENTED = (
    "dequeue_any perform_job execute_job prepare_for_execution prepare_execution intermediate_queue executions "
    "main_work_horse wait_for_horse handle_work_horse_killed maintain_heartbeats monitor_work_horse fork_work_horse "
    "handle_job_failure run_maintenance_tasks clean_registries clean_group_registries get_heartbeat_ttl register_birth "
    "bootstrap serialize redis_worker_namespace_prefix parse_composite_key push_job_id death_penalty_class set_state "
    "check_for_suspension heartbeat teardown worker_registration"
).split()
RQ_DOCUMENTED_IMPORTS = {
    "rq": {"Queue", "Worker", "SimpleWorker", "get_current_job", "Retry", "Callback"},
    "rq.job": {"Job", "JobStatus"},
    "rq.exceptions": {"NoSuchJobError", "InvalidJobOperation"},
    "rq.registry": {"StartedJobRegistry", "FailedJobRegistry", "FinishedJobRegistry", "CanceledJobRegistry"},
    "rq.results": {"Result"},
}


def test_rq_is_used_through_its_documented_api_outside_one_commented_module():
    """Issue 16: rq can be upgraded by reading one file. Outside worker/rq_seam.py no code names an rq attribute that
    rq's docs do not describe, nor a private (underscored) one, nor imports anything of rq beyond its documented names."""
    import ast

    seam = ROOT / "worker" / "rq_seam.py"
    found = []
    for path in sorted(p for folder in ("worker", "bots", "qabot", "engine") for p in (ROOT / folder).glob("*.py")):
        if path == seam:
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "rq":
                allowed = RQ_DOCUMENTED_IMPORTS.get(node.module, set())
                found += [f"{where} imports {node.module}.{a.name}" for a in node.names if a.name not in allowed]
            elif isinstance(node, ast.Import):
                found += [f"{where} imports {a.name}" for a in node.names if a.name.split(".")[0] == "rq"]
            elif isinstance(node, ast.Attribute) and (node.attr in RQ_UNDOCUMENTED or node.attr.startswith("_horse")):
                found.append(f"{where} uses .{node.attr}")
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name in RQ_UNDOCUMENTED:
                found.append(f"{where} overrides {node.name}")
    assert not found, "\n".join(found)
    assert "rq" in seam.read_text().split('"""')[1]  # the seam says what it works around, and why


def test_every_benchmark_of_make_bench_starts():
    """Each `bench/` script imports in a fresh interpreter: a name moved elsewhere (bench.faults imported DIED from the
    train worker after it had moved to worker.train_reaper) broke `make bench` with no test failing."""
    names = sorted(p.stem for p in (Path(__file__).resolve().parent.parent / "bench").glob("*.py") if p.stem != "__init__")
    code = "import importlib, sys\n" + f"for name in {names!r}: importlib.import_module('bench.' + name)\n" + "print('ok')\n"
    assert modules_loaded_by(code)[-1:] == ["ok"]
    assert {"faults", "quality", "load"} <= set(names)
