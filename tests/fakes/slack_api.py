"""A small Slack Web API on loopback: records every call, keeps the messages it was sent, and
can be told to answer the next call of a method with an error or a 429 + Retry-After.

The real slack_sdk WebClient talks to it (base_url = `server.api_url`). It implements the
methods Caliber uses: chat.postMessage, chat.update, chat.postEphemeral, views.open,
users.info, auth.test. Unknown methods answer `unknown_method`, as Slack does.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Call:
    method: str
    params: dict[str, Any]
    token: str
    at: float


@dataclass
class Scripted:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


class FakeSlack:
    def __init__(self, *, token: str = "xoxb-test") -> None:
        self.token = token
        self._lock = threading.Lock()
        self.calls: list[Call] = []
        # (channel_id, ts) -> the message as last posted/updated, with its history
        self.messages: dict[tuple[str, str], dict[str, Any]] = {}
        self.users: dict[str, dict[str, Any]] = {}
        self._scripts: dict[str, deque[Scripted]] = defaultdict(deque)
        self._ts = itertools.count(1)
        self.delay = 0.0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self._handle(b"")

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self._handle(self.rfile.read(length))

            def _handle(self, body: bytes) -> None:
                url = urlsplit(self.path)
                method = url.path.rsplit("/", 1)[-1]
                params: dict[str, Any] = {k: v[0] for k, v in parse_qs(url.query).items()}
                ctype = self.headers.get("Content-Type", "")
                if body and "json" in ctype:
                    params.update(json.loads(body))
                elif body:
                    params.update({k: v[0] for k, v in parse_qs(body.decode()).items()})
                token = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
                status, payload, headers = fake._respond(method, params, token)
                raw = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(raw)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(raw)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> FakeSlack:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/api/"

    def reset(self) -> None:
        with self._lock:
            self.calls.clear()
            self.messages.clear()
            self.users.clear()
            self._scripts.clear()
            self.delay = 0.0

    # --- scripting ---------------------------------------------------------------------------

    def fail_next(self, method: str, error: str, *, status: int = 200, times: int = 1) -> None:
        with self._lock:
            for _ in range(times):
                self._scripts[method].append(Scripted(status, {"ok": False, "error": error}))

    def rate_limit_next(self, method: str, *, retry_after: int = 1, times: int = 1) -> None:
        with self._lock:
            for _ in range(times):
                self._scripts[method].append(
                    Scripted(
                        429,
                        {"ok": False, "error": "ratelimited"},
                        {"Retry-After": str(retry_after)},
                    )
                )

    def add_user(self, user_id: str, email: str, **extra: Any) -> None:
        with self._lock:
            self.users[user_id] = {"id": user_id, "profile": {"email": email}, **extra}

    # --- inspection ----------------------------------------------------------------------------

    def calls_to(self, method: str) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if c.method == method]

    def all_messages(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(m) for m in self.messages.values()]

    # --- the API ---------------------------------------------------------------------------------

    def _respond(
        self, method: str, params: dict[str, Any], token: str
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        if self.delay:
            time.sleep(self.delay)
        with self._lock:
            self.calls.append(Call(method, params, token, time.time()))
            script = self._scripts.get(method)
            if script:
                s = script.popleft()
                return s.status, s.body, s.headers
            if token != self.token:
                return 200, {"ok": False, "error": "invalid_auth"}, {}
            handler = getattr(self, "_" + method.replace(".", "_"), None)
            if handler is None:
                return 200, {"ok": False, "error": "unknown_method"}, {}
            return 200, handler(params), {}

    @staticmethod
    def _blocks(params: dict[str, Any]) -> list[Any]:
        blocks = params.get("blocks") or []
        return json.loads(blocks) if isinstance(blocks, str) else blocks

    def _channel_id(self, channel: str) -> str:
        if channel.startswith(("C", "G")) and channel.isupper():
            return channel
        return "C" + str(abs(hash(channel.lstrip("#"))) % 10**9).zfill(9)

    def _chat_postMessage(self, p: dict[str, Any]) -> dict[str, Any]:
        channel = str(p.get("channel") or "")
        if not channel:
            return {"ok": False, "error": "channel_not_found"}
        cid = self._channel_id(channel)
        ts = f"1700000000.{next(self._ts):06d}"
        msg = {"channel": cid, "ts": ts, "text": p.get("text"), "blocks": self._blocks(p)}
        msg["history"] = [dict(msg)]
        self.messages[(cid, ts)] = msg
        return {"ok": True, "channel": cid, "ts": ts, "message": {"text": p.get("text")}}

    def _chat_update(self, p: dict[str, Any]) -> dict[str, Any]:
        key = (str(p.get("channel")), str(p.get("ts")))
        msg = self.messages.get(key)
        if msg is None:
            return {"ok": False, "error": "message_not_found"}
        msg["text"] = p.get("text")
        msg["blocks"] = self._blocks(p)
        msg["history"].append({"text": msg["text"], "blocks": msg["blocks"]})
        return {"ok": True, "channel": key[0], "ts": key[1]}

    def _chat_postEphemeral(self, p: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "message_ts": f"1700000001.{next(self._ts):06d}"}

    def _views_open(self, p: dict[str, Any]) -> dict[str, Any]:
        if not p.get("trigger_id"):
            return {"ok": False, "error": "invalid_trigger_id"}
        return {"ok": True, "view": {"id": f"V{next(self._ts)}"}}

    def _users_info(self, p: dict[str, Any]) -> dict[str, Any]:
        user = self.users.get(str(p.get("user")))
        if user is None:
            return {"ok": False, "error": "user_not_found"}
        return {"ok": True, "user": user}

    def _auth_test(self, p: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "user_id": "UBOT", "team_id": "T1"}
