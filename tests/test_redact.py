"""Secrets never reach the logs: unit checks and a full lifecycle capture."""

from __future__ import annotations

import base64
import io
import logging
from collections.abc import Iterator

import anyio
import httpx
import orjson
import pytest

from engine.auth import TokenManager
from engine.errors import AuthError
from engine.events import Event
from engine.logs import configure_logging
from engine.redact import (
    RedactingFilter,
    Secret,
    is_secret_field,
    mask_fields,
    redact,
    redact_url,
    register_secret,
)
from engine.simulator import Simulator
from engine.sources.zoom_ws import ZoomListener


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


CLIENT_ID, CLIENT_SECRET = "redact-client-id", "redact-client-secret-XYZ"
LIBRARY_LOGGERS = ("websockets", "httpx", "httpcore", "uvicorn", "engine")


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    saved_level, saved_handlers = root.level, list(root.handlers)
    saved_levels = {name: logging.getLogger(name).level for name in LIBRARY_LOGGERS}
    yield
    for handler in list(root.handlers):
        if handler not in saved_handlers:
            root.removeHandler(handler)
    root.setLevel(saved_level)
    for name, level in saved_levels.items():
        logging.getLogger(name).setLevel(level)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "wss://ws.zoom.us/ws?subscriptionId=abc&access_token=eyJ.abc-def_123",
            "wss://ws.zoom.us/…",
        ),
        ("https://hooks.example.com/T000/B000/XXXX", "https://hooks.example.com/…"),
        ("https://user:pa55word@example.com:8443/?key=v", "https://example.com:8443/…"),
        ("http://127.0.0.1:9000", "http://127.0.0.1:9000"),
        ("http://127.0.0.1:9000/", "http://127.0.0.1:9000"),
        ("http://[::1]:80/x#frag", "http://[::1]:80/…"),
        ("http://example.com:notaport/secret", "http://…"),
        ("no url at all secret", "(not a URL)"),
    ],
)
def test_redact_url_shows_scheme_host_and_port_only(url: str, shown: str) -> None:
    """One redaction for every URL: paths, queries and user info hold secrets."""
    assert redact_url(url) == shown


def test_redact_url_takes_url_objects() -> None:
    assert redact_url(httpx.URL("https://h.example/secret?q=1")) == "https://h.example/…"


def test_redact_header_values_and_registered_secrets() -> None:
    register_secret("registered-secret-123")
    text = "Authorization: Bearer abc.def-ghi and Basic dXNlcjpwYXNz and registered-secret-123!"
    assert redact(text) == "Authorization: Bearer *** and Basic *** and ***!"


def test_short_values_are_not_registered() -> None:
    register_secret("ab")
    assert redact("a b ab abc") == "a b ab abc"


def test_secret_never_shows_itself() -> None:
    secret = Secret("s3cr3t-value-000")
    assert str(secret) == repr(secret) == f"{secret}" == "***"
    assert "s3cr3t-value-000" not in repr([secret, {"k": secret}])
    assert secret.reveal() == "s3cr3t-value-000"
    assert secret == "s3cr3t-value-000" and secret == Secret("s3cr3t-value-000")
    assert redact("leaked s3cr3t-value-000") == "leaked ***"


@pytest.mark.parametrize(
    "name",
    ["password", "h323_password", "pstn_password", "encrypted_password", "passcode",
     "recording_play_passcode", "download_token", "plainToken", "client_secret",
     "Authorization", "api_key", "payload.object.password"],
)  # fmt: skip
def test_fields_named_like_credentials(name: str) -> None:
    assert is_secret_field(name)


@pytest.mark.parametrize("name", ["topic", "join_url", "host_email", "uuid", "duration"])
def test_fields_not_named_like_credentials(name: str) -> None:
    assert not is_secret_field(name)


def test_mask_fields_masks_credentials_by_name_and_urls_everywhere() -> None:
    register_secret("registered-in-event-77")
    event = {
        "topic": "sync with registered-in-event-77",
        "password": "123456",
        "settings": {"passcode": 987654, "waiting_room": True, "alternative_hosts": []},
        "join_url": "https://zoom.us/j/123?pwd=abcdef",
        "recording_files": [{"download_token": ["a-token"], "file_size": 42}],
    }
    assert mask_fields(event) == {
        "topic": "sync with ***",
        "password": "***",
        "settings": {"passcode": "***", "waiting_room": True, "alternative_hosts": []},
        "join_url": "https://zoom.us/…",
        "recording_files": [{"download_token": ["***"], "file_size": 42}],
    }
    # A value read by an expression named like a credential: masked whole,
    # except for what cannot be one (booleans, null).
    assert mask_fields("abc", secret=True) == "***"
    assert mask_fields([1, True, None], secret=True) == ["***", True, None]


def _record(msg: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("websockets.client", logging.DEBUG, __file__, 1, msg, args, None)


def test_filter_scrubs_message_args_and_tracebacks() -> None:
    register_secret("token-in-args-0001")
    record = _record("> GET %s HTTP/1.1", "/ws?subscriptionId=s&access_token=token-in-args-0001")
    assert RedactingFilter().filter(record)
    assert record.getMessage() == "> GET /ws?subscriptionId=s&access_token=*** HTTP/1.1"

    try:
        raise ValueError("failed for https://x/?access_token=other-unregistered")
    except ValueError:
        import sys

        record = logging.LogRecord(
            "httpx", logging.ERROR, __file__, 1, "boom", None, sys.exc_info()
        )
    RedactingFilter().filter(record)
    assert record.exc_text is not None and "other-unregistered" not in record.exc_text


def test_configure_logging_text_and_json(restore_logging: None) -> None:
    stream = io.StringIO()
    configure_logging("DEBUG", "text", stream=stream)
    logging.getLogger("engine.test").info("hello %s", "world", extra={"rule": "r1", "n": 3})
    line = stream.getvalue().strip()
    assert "INFO" in line and "engine.test: hello world" in line and "rule=r1 n=3" in line

    stream = io.StringIO()
    handler = configure_logging("INFO", "json", stream=stream)
    assert len([h for h in logging.getLogger().handlers if h is handler]) == 1
    logging.getLogger("engine.test").warning(
        "token %s", "Bearer abcdef123", extra={"subscription": "s1"}
    )
    logging.getLogger("engine.test").debug("not shown at INFO")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    obj = orjson.loads(lines[0])
    assert obj["level"] == "WARNING" and obj["logger"] == "engine.test"
    assert obj["msg"] == "token Bearer ***" and obj["subscription"] == "s1"
    assert obj["ts"].endswith("Z")


def test_extra_fields_are_redacted_too(restore_logging: None) -> None:
    register_secret("extra-field-secret-77")
    stream = io.StringIO()
    configure_logging("INFO", "text", stream=stream)
    logging.getLogger("engine.test").info("x", extra={"value": "extra-field-secret-77"})
    assert "extra-field-secret-77" not in stream.getvalue()


@pytest.mark.anyio
@pytest.mark.parametrize("fmt", ["text", "json"])
async def test_no_secret_in_any_log_output_over_a_full_lifecycle(
    fmt: str, restore_logging: None
) -> None:
    stream = io.StringIO()
    configure_logging("DEBUG", fmt, stream=stream)  # type: ignore[arg-type]
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG)

    received: list[Event] = []
    arrived = anyio.Event()

    async def on_event(event: Event) -> None:
        received.append(event)
        arrived.set()

    sim = Simulator(client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
    async with sim, httpx.AsyncClient() as http:
        tokens = TokenManager(
            oauth_url=sim.oauth_url, client_id=CLIENT_ID, client_secret=CLIENT_SECRET, http=http
        )
        listener = ZoomListener(
            subscription="redact",
            endpoint=sim.ws_endpoint,
            tokens=tokens,
            backoff_initial=0.05,
            heartbeat_interval=0.1,
        )
        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(listener.run, on_event)
                await sim.wait_connected()  # token fetch + connect
                await sim.wait_heartbeats(2)
                await sim.drop(1006)  # TCP reset
                await sim.wait_connected(count=2)  # reconnect
                sim.expire_tokens()
                await sim.drop(1001)  # next connect is refused: token refresh
                await sim.wait_connected(count=3)
                await sim.send_event({"event": "meeting.started", "event_ts": 1, "payload": {}})
                await arrived.wait()
                # A REST call with the bearer token, logged by httpx/httpcore.
                token = await tokens.token()
                await http.get(
                    f"{sim.api_base_url}/users/me", headers={"Authorization": f"Bearer {token}"}
                )
                tg.cancel_scope.cancel()
        # Bad credentials: the AuthError is logged with a traceback.
        bad = TokenManager(
            oauth_url=sim.oauth_url,
            client_id=CLIENT_ID,
            client_secret="bad-secret-value",
            http=http,
        )
        with pytest.raises(AuthError) as info:
            await bad.token()
        logging.getLogger("engine.test").error("fatal", exc_info=info.value)

    output = stream.getvalue()
    assert len(sim.issued_tokens) >= 2
    basic = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
    bad_basic = base64.b64encode(f"{CLIENT_ID}:bad-secret-value".encode()).decode()
    for secret in [*sim.issued_tokens, CLIENT_SECRET, basic, "bad-secret-value", bad_basic]:
        assert secret not in output
    # The capture really saw the dangerous lines, masked.
    assert "access_token=***" in output  # websockets' DEBUG request line
    assert "websockets.client" in output and "httpx" in output
    assert "Invalid client_id or client_secret" in output
    # Objects holding secrets print none either.
    for obj in (tokens, bad, listener, info.value):
        text = repr(obj) + str(obj)
        assert CLIENT_SECRET not in text and "bad-secret-value" not in text
        assert not any(t in text for t in sim.issued_tokens)
