"""A small OpenAI-compatible server on loopback for tests: the real `openai` client talks to it.

It answers POST /v1/chat/completions. Tests script it: `server.script(...)` queues responses
(a JSON body to return as the assistant message, an HTTP status with headers, a delay); when
the script is empty, `server.responder(request_json)` answers (by default a valid answer for
each schema the triage workflow asks for). Every request is recorded.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Scripted:
    content: Any = None  # dict -> JSON message content; str -> raw content
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    error_body: dict[str, Any] | None = None
    message_extra: dict[str, Any] = field(default_factory=dict)  # e.g. tool_calls


CANNED: dict[str, dict[str, Any]] = {
    "Classification": {
        "category": "billing",
        "urgency": "normal",
        "confidence": 0.91,
        "uncertain_about": "whether the second charge is a pre-authorisation",
    },
    "Draft": {
        "reply": "Hi Ada,\n\nThanks for telling us. Billing is checking the charge and "
        "will email you the outcome.\n\nBest,\nSupport",
        "confidence": 0.8,
        "uncertain_about": "tone",
    },
    "Proposal": {
        "actions": [
            {
                "action_type": "update_crm",
                "payload": {"ticket_id": "T-000001", "category": "billing", "urgency": "normal"},
                "confidence": 0.91,
                "rationale": "record the classification",
            },
            {
                "action_type": "send_reply",
                "payload": {"ticket_id": "T-000001", "to": "ada.1@example.com", "body": "Hi Ada"},
                "confidence": 0.8,
                "rationale": "answer the customer",
            },
        ]
    },
    "Judgement": {"ok": True, "problems": []},
    "Summary": {
        "summary": "The triage agent wants to send an irreversible, customer-facing "
        "reply about a double charge; policy requires a person for irreversible "
        "actions. It is unsure about the tone."
    },
}


def schema_name(request: dict[str, Any]) -> str:
    return str(request.get("response_format", {}).get("json_schema", {}).get("name", ""))


class FakeOpenAI:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self._script: deque[Scripted] = deque()
        self.responder: Callable[[dict[str, Any]], Any] = lambda req: CANNED[schema_name(req)]
        self.prompt_tokens = 100
        self.completion_tokens = 20
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                with server._lock:
                    server.requests.append(body)
                    step = server._script.popleft() if server._script else None
                if step is None:
                    answer = server.responder(body)
                    # A responder may answer with a status, headers or a delay too.
                    step = answer if isinstance(answer, Scripted) else Scripted(content=answer)
                if step.delay:
                    time.sleep(step.delay)
                if step.status != 200:
                    payload = step.error_body or {
                        "error": {"message": f"scripted {step.status}", "type": "fake"}
                    }
                    self._send(step.status, payload, step.headers)
                    return
                content = (
                    step.content if isinstance(step.content, str) else json.dumps(step.content)
                )
                tokens: list[dict[str, Any]] = [
                    {"token": t, "logprob": -0.05, "bytes": None, "top_logprobs": []}
                    for t in ("a", "b")
                ]
                self._send(
                    200,
                    {
                        "id": "chatcmpl-fake",
                        "object": "chat.completion",
                        "created": int(time.time()),
                        "model": body.get("model", "fake"),
                        "choices": [
                            {
                                "index": 0,
                                "finish_reason": "stop",
                                "message": {
                                    "role": "assistant",
                                    "content": content,
                                    "refusal": None,
                                    **step.message_extra,
                                },
                                "logprobs": {"content": tokens} if body.get("logprobs") else None,
                            }
                        ],
                        "usage": {
                            "prompt_tokens": server.prompt_tokens,
                            "completion_tokens": server.completion_tokens,
                            "total_tokens": server.prompt_tokens + server.completion_tokens,
                        },
                    },
                    step.headers,
                )

            def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str]) -> None:
                raw = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(raw)))
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(raw)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> FakeOpenAI:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def script(self, *steps: Scripted) -> None:
        with self._lock:
            self._script.extend(steps)

    def schemas_asked(self) -> list[str]:
        return [schema_name(r) for r in self.requests]
