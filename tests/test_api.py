"""The /v1 endpoint, driven by the official `openai` client against a real server on 127.0.0.1.

One `python app.py serve` (wizard + API on one port) serves a tiny base with library adapters;
the key and queue tests start their own small servers.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from tests.tiny import make_tiny_model
from tests.tiny_adapters import make_tiny_adapter

ROOT = Path(__file__).resolve().parent.parent
HI = [{"role": "user", "content": "What is 2 + 2?"}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(args: list[str], home: Path, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    environment = dict(
        os.environ,
        LORAPILOT_HOME=str(home),
        PYTHONPATH=str(ROOT),
        LORAPILOT_WARM="0",
        GRADIO_ANALYTICS_ENABLED="False",
        **(env or {}),
    )
    if "LORAPILOT_API_KEY" not in (env or {}):
        environment.pop("LORAPILOT_API_KEY", None)
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "app.py"), "serve", "--port", str(port), *args],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited: {proc.stdout.read()}")
        try:
            httpx.get(url + "/models", timeout=5)
            return proc, url
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise AssertionError("server did not answer within 180 s")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny base, a second base, adapters for both (three in the library), and the server's home."""
    root = tmp_path_factory.mktemp("api")
    base = make_tiny_model(root / "base")
    other = make_tiny_model(root / "other-base", seed=5)
    folders = {
        "alpha": make_tiny_adapter(base, root / "alpha", seed=1),
        "beta.v2": make_tiny_adapter(base, root / "beta", seed=2, targets=("q_proj", "v_proj", "up_proj")),
        "gamma": make_tiny_adapter(base, root / "gamma", seed=3),
        "foreign": make_tiny_adapter(other, root / "foreign", seed=4),
    }
    home = root / "home"
    home.mkdir()
    saved = os.environ.get("LORAPILOT_HOME")
    os.environ["LORAPILOT_HOME"] = str(home)  # the library the server will read
    try:
        from jobs import library

        for name in ("alpha", "beta.v2", "foreign"):
            library.import_adapter(folders[name], name=name)
    finally:
        os.environ["LORAPILOT_HOME"] = saved or ""
    return {"base": str(base), "folders": folders, "home": home}


@pytest.fixture(scope="module")
def server(world):
    proc, url = start(["--model", world["base"]], world["home"])
    yield url
    stop(proc)


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server, api_key="unused", max_retries=0, timeout=120)


def chat(client, model, **kw):
    kw = {"max_tokens": 8, "temperature": 0} | kw
    return client.chat.completions.create(model=model, messages=HI, **kw)


def test_models_lists_the_base_and_every_library_adapter(client, server, world):
    models = {m.id: m for m in client.models.list()}
    assert set(models) == {world["base"], "alpha", "beta.v2", "foreign"}
    assert models["alpha"].model_extra["parent"] == world["base"]
    page = httpx.get(server.removesuffix("/v1") + "/", timeout=60)  # the wizard, on the same port
    assert page.status_code == 200 and "LoRA Pilot" in page.text


def test_a_concurrent_burst_for_two_adapters_and_the_base(client, world):
    names = ["alpha", "beta.v2", world["base"]] * 2
    with ThreadPoolExecutor(len(names)) as pool:
        burst = list(pool.map(lambda m: chat(client, m), names))
    alone = {m: chat(client, m) for m in names[:3]}
    for model, answer in zip(names, burst):
        assert answer.choices[0].message.content == alone[model].choices[0].message.content
        assert answer.model == model
        assert 1 <= answer.usage.completion_tokens <= 8
        assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens
    texts = {alone[m].choices[0].message.content for m in names[:3]}
    assert len(texts) == 3  # two adapters and the base really answer differently


def test_streaming_adds_up_to_the_whole_answer(client):
    whole = chat(client, "alpha", max_tokens=12)
    chunks = list(chat(client, "alpha", max_tokens=12, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(
            model="beta.v2", prompt="The quick brown", max_tokens=10, temperature=0, stream=True
        )
    )
    assert (
        streamed
        == client.completions.create(model="beta.v2", prompt="The quick brown", max_tokens=10, temperature=0)
        .choices[0]
        .text
    )


def test_seed_stop_and_max_tokens_are_honoured(client):
    sampled = [
        chat(client, "alpha", temperature=1.0, top_p=0.9, seed=11, max_tokens=10).choices[0].message.content
        for _ in range(2)
    ]
    assert sampled[0] == sampled[1]
    full = client.completions.create(model="alpha", prompt="hello", max_tokens=16, temperature=0).choices[0]
    assert full.finish_reason == "length"
    stop = full.text[4:6]
    cut = client.completions.create(model="alpha", prompt="hello", max_tokens=16, temperature=0, stop=[stop])
    assert cut.choices[0].text == full.text[: full.text.find(stop)] and cut.choices[0].finish_reason == "stop"
    assert client.completions.create(model="alpha", prompt="hello", max_tokens=3).usage.completion_tokens == 3


def test_adapters_load_and_unload_at_runtime(client, world):
    path = str(world["folders"]["gamma"])
    assert "gamma" not in {m.id for m in client.models.list()}
    said = client.post("/load_lora_adapter", body={"lora_name": "gamma", "lora_path": path}, cast_to=str)
    assert "added successfully" in said
    assert "gamma" in {m.id for m in client.models.list()}
    assert chat(client, "gamma").choices[0].message.content
    with pytest.raises(openai.BadRequestError, match="already served"):
        client.post("/load_lora_adapter", body={"lora_name": "gamma", "lora_path": path}, cast_to=str)
    client.post("/unload_lora_adapter", body={"lora_name": "gamma"}, cast_to=str)
    with pytest.raises(openai.NotFoundError):
        chat(client, "gamma")
    with pytest.raises(openai.BadRequestError, match="trained on"):
        client.post(
            "/load_lora_adapter", body={"lora_name": "f2", "lora_path": str(world["folders"]["foreign"])}, cast_to=str
        )
    with pytest.raises(openai.BadRequestError, match="lora_path"):
        client.post("/load_lora_adapter", body={"lora_name": "nothing", "lora_path": "/no/such/folder"}, cast_to=str)


def test_every_bad_request_gets_a_clear_error_and_the_server_keeps_serving(client, server, world):
    with pytest.raises(openai.NotFoundError) as unknown:
        chat(client, "nope")
    assert "alpha" in str(unknown.value) and "beta.v2" in str(unknown.value)
    with pytest.raises(openai.BadRequestError, match="another-base|other-base") as foreign:
        chat(client, "foreign")
    assert "this server serves" in str(foreign.value)
    with pytest.raises(openai.BadRequestError, match="temperature"):
        chat(client, "alpha", temperature="hot")
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        chat(client, "alpha", max_tokens=10**6)
    with pytest.raises(openai.BadRequestError, match=r"context is 2048") as long:
        client.chat.completions.create(model="alpha", messages=[{"role": "user", "content": "fox " * 3000}])
    assert "prompt has" in str(long.value)
    with pytest.raises(openai.BadRequestError, match="messages"):
        client.chat.completions.create(model="alpha", messages=[{"role": "user", "content": 5}])
    with pytest.raises(openai.BadRequestError, match="n"):
        chat(client, "alpha", n=2)
    raw = [
        httpx.post(server + "/chat/completions", content=b"{not json", headers={"content-type": "application/json"}),
        httpx.post(server + "/completions", json={"model": "alpha"}),
        httpx.post(server + "/chat/completions", json=["a list"]),
        httpx.post(server + "/unload_lora_adapter", json={"lora_name": "ghost"}),
    ]
    assert [r.status_code for r in raw] == [400, 400, 400, 404]
    assert raw[1].json()["error"]["param"] == "prompt"
    for r in raw:
        assert "Traceback" not in r.text and r.json()["error"]["message"]
    assert chat(client, "alpha").choices[0].message.content  # still serving


def test_an_api_key_is_required_when_set(world):
    proc, url = start(["--api-only", "--model", world["base"]], world["home"], {"LORAPILOT_API_KEY": "s3cret"})
    try:
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url, api_key="wrong", max_retries=0).models.list()
        assert httpx.get(url + "/models").status_code == 401
        ids = [m.id for m in openai.OpenAI(base_url=url, api_key="s3cret", max_retries=0).models.list()]
        assert world["base"] in ids
    finally:
        stop(proc)


def test_refuses_to_listen_beyond_loopback_without_a_key(monkeypatch, capsys):
    from app import main

    monkeypatch.delenv("LORAPILOT_API_KEY", raising=False)
    assert main(["serve", "--api-only", "--host", "0.0.0.0"]) == 2
    assert "LORAPILOT_API_KEY" in capsys.readouterr().err
    assert main(["serve", "--host", "0.0.0.0", "--auth", "me:pw"]) == 2  # the wizard's sign-in does not cover /v1
    assert "LORAPILOT_API_KEY" in capsys.readouterr().err


def test_a_full_queue_answers_429(world, monkeypatch):
    """In-process server (real uvicorn on 127.0.0.1) whose decoder holds its first batch, so the
    queue fills deterministically."""
    import uvicorn

    from engine.adapters import batch
    from ui.api import app as api

    monkeypatch.setenv("LORAPILOT_HOME", str(world["home"]))
    service = api.Service(world["base"], max_queue=1)
    host = service.host()
    gate, holding = threading.Event(), threading.Event()
    runner = batch.HostRunner(host)

    def gated(requests):
        holding.set()
        assert gate.wait(120)
        return runner(requests)

    service.scheduler().stop()
    service._scheduler = batch.Scheduler(gated, max_queue=1)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(api.build_app(service, None), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0, timeout=120)
    try:
        deadline = time.monotonic() + 60
        while not server.started:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(chat, client, "alpha")
            assert holding.wait(60)  # the first request is being decoded (and held)
            second = pool.submit(chat, client, world["base"])
            deadline = time.monotonic() + 60
            while service.scheduler().waiting() < 1:  # the second waits in the queue
                assert time.monotonic() < deadline
                time.sleep(0.05)
            with pytest.raises(openai.RateLimitError, match="busy"):
                chat(client, "alpha")
            gate.set()
            assert first.result(timeout=120).choices[0].message.content
            assert second.result(timeout=120).choices[0].message.content
    finally:
        gate.set()
        server.should_exit = True
        thread.join(timeout=30)
        service.stop()
