"""Two-step verification, the book's event-driven example, as four small functions.

    POST /login {"user", "password"}  -> checks the password, makes a one-time code and
                                         emits "code.generated"; answers a login id
    deliver (event code.generated)    -> writes the code to the user's outbox (the SMS or
                                         e-mail of a real system), once per login
    POST /verify {"login_id", "code"} -> 200 within the time limit, 401 for a wrong code,
                                         410 once the code expired or was used

Run it with ``podkit functions serve examples/two-step/app.py --listen 127.0.0.1:8080``
(or ``podkit up examples/two-step/pod.yaml``). Settings come from the environment:
TWO_STEP_DIR (where the codes database and the outbox live, default ``.``) and
TWO_STEP_CODE_TTL (seconds a code is valid, default 300).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import sqlite3
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from podkit.functions import (
    FunctionRequest,
    FunctionResponse,
    emit,
    idempotent,
    on_event,
    on_http,
    rate_limit,
    validate,
)

HERE = Path(os.environ.get("TWO_STEP_DIR", "."))
CODE_TTL = float(os.environ.get("TWO_STEP_CODE_TTL", "300"))
MAX_TRIES = 3  # wrong codes before a login is refused for good
# The users of the example: name -> SHA-256 of the password (a real system would use a
# slow password hash such as scrypt, and its own user store).
USERS = {"ann": hashlib.sha256(b"correct horse").hexdigest()}


def _db() -> sqlite3.Connection:
    HERE.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(HERE / "two-step.db", isolation_level=None, timeout=30)
    db.execute(
        "CREATE TABLE IF NOT EXISTS codes (login_id TEXT PRIMARY KEY, user TEXT, "
        "code_hash TEXT, expires REAL, tries INTEGER DEFAULT 0)"
    )
    return db


def _hash(code: str) -> str:
    return hashlib.sha256(code.encode()).hexdigest()


class Login(BaseModel):
    user: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=256)


class Verify(BaseModel):
    login_id: str = Field(min_length=32, max_length=32)
    code: str = Field(pattern=r"^\d{6}$")


@on_http("POST /login")
@rate_limit("10/s")
@validate(Login)
def login(request: FunctionRequest) -> Any:
    body = request.json
    known = USERS.get(body["user"], "")
    given = hashlib.sha256(body["password"].encode()).hexdigest()
    if not known or not hmac.compare_digest(known, given):
        return FunctionResponse({"error": "wrong user or password"}, status=401)
    login_id = secrets.token_hex(16)
    code = f"{secrets.randbelow(10**6):06d}"
    with _db() as db:
        db.execute(
            "INSERT INTO codes (login_id, user, code_hash, expires) VALUES (?, ?, ?, ?)",
            (login_id, body["user"], _hash(code), time.time() + CODE_TTL),
        )
    emit("code.generated", {"login_id": login_id, "user": body["user"], "code": code})
    return {"login_id": login_id, "expires_in": CODE_TTL}


@on_event("code.generated", max_age="5m")
@idempotent(key="$.login_id", ttl="1h")
def deliver(event: Any) -> None:
    outbox = HERE / "outbox"
    outbox.mkdir(parents=True, exist_ok=True)
    with (outbox / f"{event.data['user']}.txt").open("a") as f:
        f.write(f"{event.data['login_id']} {event.data['code']}\n")


@on_http("POST /verify")
@validate(Verify)
def verify(request: FunctionRequest) -> Any:
    body = request.json
    with _db() as db:
        row = db.execute(
            "SELECT code_hash, expires, tries FROM codes WHERE login_id = ?", (body["login_id"],)
        ).fetchone()
        if row is None or row[1] < time.time() or row[2] >= MAX_TRIES:
            db.execute("DELETE FROM codes WHERE login_id = ?", (body["login_id"],))
            return FunctionResponse({"error": "the code expired; log in again"}, status=410)
        if not hmac.compare_digest(row[0], _hash(body["code"])):
            db.execute("UPDATE codes SET tries = tries + 1 WHERE login_id = ?", (body["login_id"],))
            return FunctionResponse({"error": "wrong code"}, status=401)
        db.execute("DELETE FROM codes WHERE login_id = ?", (body["login_id"],))
    return {"verified": True}
