"""Fixtures: tiny GPT-2 and Llama models built from scratch and saved to disk, small datasets."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# `make test` runs the suite in pytest-xdist workers, which share the cores: each worker's torch gets its share of
# them, as a torch thread that loses its core stalls every step it takes part in (see SUBPROCESS_THREADS).
if workers := int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0")):
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))

from qabot.dataset import QAPair

DATA_DIR = Path(__file__).resolve().parent.parent / "data"

# A tiny world the tiny models can learn in seconds.
TINY_PAIRS = [
    QAPair("Who guards the Luminary Stone?", "Elara guards the Luminary Stone."),
    QAPair("Where is the Luminary Stone kept?", "It is kept in the Sanctum of Veyra."),
    QAPair("What do the trees of the Whispering Woods do?", "They whisper old secrets."),
    QAPair("Who trained Elara?", "Orrin Vale trained Elara."),
    QAPair("What is the capital of Eldoria?", "Aurelhaven is the capital."),
    QAPair("Which river runs through Aurelhaven?", "The Silverrun River."),
    QAPair("Who leads the Ashen Legion?", "Malvek the Hollow leads it."),
    QAPair("What coin do merchants use?", "They pay in sunmarks."),
]


def _train_tokenizer(texts: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>", unk_token="<|endoftext|>"
    )


def _corpus() -> list[str]:
    pairs = json.loads((DATA_DIR / "sample.json").read_text())
    texts = [f"Question: {p['prompt']}\nAnswer: {p['response']}" for p in pairs]
    return texts + [f"Question: {p.prompt}\nAnswer: {p.response}" for p in TINY_PAIRS]


def _build(kind: str, folder: Path) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

    torch.manual_seed(0)
    tokenizer = _train_tokenizer(_corpus())
    vocab = len(tokenizer)
    eos = tokenizer.eos_token_id
    if kind == "gpt2":
        config = GPT2Config(vocab_size=vocab, n_positions=256, n_embd=64, n_layer=2, n_head=4, bos_token_id=eos, eos_token_id=eos)
    else:
        config = LlamaConfig(
            vocab_size=vocab,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            bos_token_id=eos,
            eos_token_id=eos,
            tie_word_embeddings=True,
        )
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> Path:
    """A 2-layer GPT-2 with a byte-level BPE tokenizer, saved as a model folder."""
    return _build("gpt2", tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    """A 2-layer Llama (the bundled model's family), saved as a model folder."""
    return _build("llama", tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(params=["gpt2", "llama"])
def tiny_model(request) -> Path:
    """Each tiny architecture in turn."""
    return request.getfixturevalue(f"tiny_{request.param}")


def wait_until(predicate, timeout: float, what: str, log: Path | None = None):
    """Poll `predicate` until it returns something true (returned) or `timeout` passes (AssertionError with `what` and
    the tail of a worker's `log`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    tail = log.read_text()[-3000:] if log is not None and log.exists() else ""
    raise AssertionError(f"not within {timeout} s: {what}\n{tail}")


# A `qabot` subprocess runs torch on one thread. The suite runs several processes with torch at once on a CI host of
# few cores; with torch's default (a thread per core) a busy neighbour made decoding about 10x slower (OpenMP waits at
# each step for its descheduled thread): a 1200-token answer of the tiny llama took 9.2 s instead of 0.9 s beside one
# busy process on 2 cores, and 1.0 s on one thread, so timing-bound tests failed on loaded hosts.
SUBPROCESS_THREADS = {"OMP_NUM_THREADS": "1"}


def qabot_env(values: dict[str, str]) -> dict[str, str]:
    """The environment for a `qabot` subprocess: this one's, minus any QABOT_* of the developer's, plus `values`."""
    kept = {k: v for k, v in os.environ.items() if not k.startswith("QABOT_")}
    return kept | SUBPROCESS_THREADS | {"PYTHONFAULTHANDLER": "1"} | values


def stop_workers(workers: list[subprocess.Popen], logs: list[Path]) -> None:
    """SIGTERM each worker (rq's warm shutdown) and wait; one still running after 30 s is made to dump its threads'
    stacks into its log (PYTHONFAULTHANDLER, set by qabot_env) before the test fails, so that the hang can be read."""
    for proc in workers:
        proc.terminate()
    for proc, log in zip(workers, logs, strict=True):
        exit_code(proc, 30, log)


def _tail(log: Path, chars: int = 6000) -> str:
    return log.read_text(errors="replace")[-chars:] if log.exists() else ""


def exit_code(proc: subprocess.Popen, timeout: float, log: Path) -> int:
    """Wait for a worker logging to `log` to end by itself; its exit code. One still running after `timeout` is made to
    dump its threads' stacks into its log (PYTHONFAULTHANDLER) and the test fails with the log's tail."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)
        proc.wait(timeout=30)
        pytest.fail(f"{' '.join(proc.args[-3:])} did not end within {timeout} s; its log ({log}):\n{_tail(log)}")


def wait_for_exit(proc: subprocess.Popen, timeout: float) -> str:
    """Wait for a worker started with stdout=PIPE (stderr joined) to end by itself; its output. One still running after
    `timeout` is made to dump its threads' stacks (PYTHONFAULTHANDLER) and the test fails with them."""
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)
        out, _ = proc.communicate(timeout=30)
        pytest.fail(f"{' '.join(proc.args[-3:])} did not end within {timeout} s; its output:\n{out[-6000:]}")
    return out


@contextlib.contextmanager
def qabot_workers(env: dict[str, str], home: Path, kinds: tuple[str, ...], *, ready: bool = False):
    """`qabot worker <kind>` processes for a test stack, each logging to home/<kind>-worker.log (<kind>-<n>-worker.log
    where a kind runs more than once); stopped on exit. With `ready`, each has registered with rq on its queue before
    the stack is used, as workers are started before the bots: on a loaded 2-core host an answer worker took longer
    to start than a bot's no-worker wait, and the first asker heard that no answer worker runs."""
    names = [f"{kind}-{n}" if kinds.count(kind) > 1 else kind for n, kind in enumerate(kinds)]
    logs = [(home / f"{name}-worker.log").open("w") for name in names]
    workers = [
        subprocess.Popen([sys.executable, "-m", "qabot", "worker", kind], env=env, stderr=log)
        for kind, log in zip(kinds, logs, strict=True)
    ]
    try:
        if ready:
            from redis import Redis
            from rq import Queue

            connection = Redis.from_url(env["QABOT_REDIS_URL"])
            for kind, proc, log in zip(kinds, workers, logs, strict=True):
                queue = Queue(kind, connection=connection)  # `qabot worker <kind>` serves the queue of that name
                wait_until(partial(_registered, queue, proc.pid), 180, f"the {kind} worker registers", Path(log.name))
        yield workers
    finally:
        try:
            stop_workers(workers, [Path(log.name) for log in logs])
        finally:
            for log in logs:
                log.close()


def _registered(queue, pid: int) -> bool:
    """A worker of process `pid` is registered with rq on `queue`."""
    from rq import Worker

    return any(w.pid == pid for w in Worker.all(queue=queue))


def write_pairs(path: Path, pairs: list[QAPair]) -> Path:
    path.write_text(json.dumps([{"prompt": p.prompt, "response": p.response} for p in pairs]), encoding="utf-8")
    return path


@pytest.fixture
def tiny_data(tmp_path) -> Path:
    return write_pairs(tmp_path / "tiny.json", TINY_PAIRS)


@pytest.fixture
def tiny_heldout(tmp_path) -> Path:
    items = [
        {"question": "Who protects the Luminary Stone?", "facts": ["Elara"], "answer": TINY_PAIRS[0].response},
        {"question": "Which city is Eldoria's capital?", "facts": ["Aurelhaven"], "answer": TINY_PAIRS[4].response},
    ]
    path = tmp_path / "tiny-heldout.json"
    path.write_text(json.dumps(items), encoding="utf-8")
    return path


TINY_CONFIG = {
    "grounded": False,
    "epochs": 40,
    "learning_rate": 3e-3,
    "batch_size": 4,
    "checkpoints": False,
    "early_stopping_patience": 0,
}


@pytest.fixture(scope="session")
def trained_tiny(tiny_gpt2, tmp_path_factory):
    """The tiny GPT-2 fine-tuned on TINY_PAIRS and released as version v0001 (live) of a store."""
    from engine.versions import ModelStore

    root = tmp_path_factory.mktemp("store")
    data = write_pairs(root / "tiny.json", TINY_PAIRS)
    store = ModelStore(root / "models")
    outcome = release_tiny(store, data, tiny_gpt2, root / "cache")
    return store, outcome


def release_tiny(store, data: Path, base_model: Path, cache: Path, *, eval_data: Path | None = None, **config):
    """Validate `data` and release a fine-tune of `base_model` on it through the one release path (CPU)."""
    from engine.pipeline import TrainRequest, load_base, validate_file
    from engine.release import Policy, release
    from engine.training import TrainConfig

    train = TrainConfig(**(TINY_CONFIG | config))
    base = load_base(str(base_model), cache, train.max_length)
    request = TrainRequest(str(base_model), train, eval_data, source=data.name)
    return release(store, validate_file(data, base), base, request, Policy(device="cpu"))


@pytest.fixture(scope="session")
def bundled_model(tmp_path_factory):
    """The bundled offline model converted once for the session: (its folder, the cache it lives in)."""
    from engine.models import ensure_bundled

    cache = tmp_path_factory.mktemp("bundled-cache")
    return ensure_bundled(cache), cache


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A real redis-server on a free loopback port for the whole session (no persistence)."""
    import shutil

    from qabot.errors import ServiceUnavailable
    from worker.localredis import start_redis_server, stop_redis_server

    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed: `apt-get install redis-server` (.ci/run does it)")
    port = _free_port()
    try:
        proc = start_redis_server(port, tmp_path_factory.mktemp("redis"), appendonly=False)
    except ServiceUnavailable as exc:
        pytest.fail(str(exc))
    yield f"redis://127.0.0.1:{port}/0"
    stop_redis_server(proc)


@pytest.fixture
def redis_url(redis_server) -> str:
    """The session's Redis, emptied for this test."""
    from redis import Redis

    Redis.from_url(redis_server).flushall()
    return redis_server


@pytest.fixture
def home(trained_tiny, tmp_path) -> Path:
    """A QABOT_HOME holding a copy of the trained tiny store (v0001 live), for tests that change it."""
    import shutil

    store, _ = trained_tiny
    target = tmp_path / "home"
    shutil.copytree(store.root, target / "models")
    return target
