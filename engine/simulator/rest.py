"""Canned REST API answers: plausible bodies and Zoom-shaped errors."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any

#: Zoom's error bodies are `{"code": ..., "message": ...}`.
_ERRORS: dict[int, tuple[int, str]] = {
    400: (300, "Validation Failed."),
    401: (124, "Invalid access token."),
    403: (200, "No permission."),
    404: (404, "Not found."),
    409: (409, "Conflict."),
    429: (429, "You have reached the maximum per-second rate limit for this API. Try again later."),
    500: (500, "Internal server error."),
    502: (502, "Bad gateway."),
    503: (503, "Service temporarily unavailable."),
}


@dataclass
class SimResponse:
    """A scripted REST answer. `body=None` gives Zoom's error body for the status."""

    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    #: For 429/503: the Retry-After header value (None: "1" for 429; "" omits it).
    retry_after: float | str | None = None


@dataclass(frozen=True)
class ApiCall:
    """One request the simulated REST API received (credentials removed)."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    json: Any
    token_valid: bool
    at: float


def error_body(status: int, path: str) -> dict[str, Any]:
    if status == 404:
        return _not_found(path)
    code, message = _ERRORS.get(status, (status, "Error."))
    return {"code": code, "message": message}


def _not_found(path: str) -> dict[str, Any]:
    parts = path.strip("/").split("/")
    # /v2/meetings/{id}, /v2/users/{id}: Zoom names the missing object.
    if len(parts) >= 3 and parts[1] == "meetings":
        return {"code": 3001, "message": f"Meeting does not exist: {parts[2]}."}
    if len(parts) >= 3 and parts[1] == "users":
        return {"code": 1001, "message": f"User does not exist: {parts[2]}."}
    return {"code": 404, "message": "Not found."}


def headers_for(response: SimResponse) -> dict[str, str]:
    headers = dict(response.headers)
    if response.status == 429:
        retry_after = "1" if response.retry_after is None else str(response.retry_after)
        if retry_after:
            headers.setdefault("Retry-After", retry_after)
        headers.setdefault("X-RateLimit-Category", "Light")
        headers.setdefault("X-RateLimit-Type", "QPS")
    elif response.retry_after not in (None, ""):
        headers.setdefault("Retry-After", str(response.retry_after))
    return headers


def default_response(method: str, path: str, body: Any) -> SimResponse:
    """What the simulated API answers when nothing was scripted."""
    parts = path.strip("/").split("/")  # ["v2", "meetings", "123", ...]
    if method == "GET":
        return SimResponse(200, _get_body(parts))
    if method == "POST":
        created = {"id": random.randint(10**10, 10**11 - 1)}
        if isinstance(body, dict):
            created = {**body, **created}
        if len(parts) == 4 and parts[1] == "users" and parts[3] == "meetings":
            created = {**_meeting(str(created["id"])), **created}
        return SimResponse(201, created)
    return SimResponse(204)  # PATCH / PUT / DELETE


def _get_body(parts: list[str]) -> dict[str, Any]:
    if len(parts) == 3 and parts[1] == "meetings":
        return _meeting(parts[2])
    if len(parts) == 3 and parts[1] == "users":
        return _user(parts[2])
    if len(parts) == 2 or (len(parts) == 4 and parts[1] == "users"):
        # A list endpoint (/v2/users, /v2/users/{id}/meetings): an empty page.
        return {"page_size": 30, "total_records": 0, "next_page_token": "", parts[-1]: []}
    return {"id": parts[-1]}


def _meeting(meeting_id: str) -> dict[str, Any]:
    number = int(meeting_id) if meeting_id.isdigit() else 85746065432
    return {
        "id": number,
        "uuid": "4444AAAiAAAAAiAiAiiAii==",
        "host_id": "z8yCxjabcdEFGHfp8uQ",
        "host_email": "host@example.com",
        "topic": "Simulated meeting",
        "type": 2,
        "status": "waiting",
        "start_time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "duration": 60,
        "timezone": "UTC",
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "join_url": f"https://zoom.us/j/{number}",
        "start_url": f"https://zoom.us/s/{number}",
        "password": "123456",
        "settings": {"waiting_room": False, "join_before_host": False},
    }


def _user(user_id: str) -> dict[str, Any]:
    email = user_id if "@" in user_id else "user@example.com"
    return {
        "id": "z8yCxjabcdEFGHfp8uQ" if user_id == "me" or "@" in user_id else user_id,
        "first_name": "Sim",
        "last_name": "User",
        "display_name": "Sim User",
        "email": email,
        "type": 2,
        "status": "active",
        "timezone": "UTC",
    }
