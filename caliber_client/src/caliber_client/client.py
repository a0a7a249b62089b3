"""The API client: `Caliber` (blocking) and `AsyncCaliber` (asyncio), the same methods."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import httpx

from .errors import (
    Answered,
    ApprovalTimeout,
    AuthenticationFailed,
    Blocked,
    CaliberError,
    Conflict,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    Rejected,
)

APPROVED = frozenset({"auto_approved", "approved", "executed", "failed"})
# The server holds a long-poll at most this long; the client asks for at most this per call.
LONG_POLL_SECONDS = 30.0
# Transient failures retried with the same request (safe: submissions and run starts carry an
# idempotency key, everything else is a read or idempotent).
RETRY_STATUSES = frozenset({502, 503, 504})
# A request with an idempotency key is also retried after a 500: the server may have
# committed before failing (its connection dropped), and the key makes the retry find that.
KEYED_RETRY_STATUSES = RETRY_STATUSES | {500}
RETRY_DELAYS = (0.25, 1.0, 3.0)


@dataclass(frozen=True)
class Approval:
    """An action as Caliber sees it. `payload_to_execute` is what to run if approved: the
    reviewer's edited payload, or yours."""

    id: str
    status: str
    decided: bool
    action_type: str
    payload: dict[str, Any]
    payload_to_execute: dict[str, Any]
    verdict: str | None
    reason: str
    reasons: list[str]
    escalation_id: str | None
    decided_by: str | None
    data: dict[str, Any] = field(repr=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Approval:
        return cls(
            id=str(data["id"]),
            status=data["status"],
            decided=bool(data["decided"]),
            action_type=data["action_type"],
            payload=data["payload"],
            payload_to_execute=data["payload_to_execute"],
            verdict=data.get("verdict"),
            reason=data.get("reason") or "",
            reasons=list(data.get("decision", {}).get("reasons", [])),
            escalation_id=data.get("escalation_id"),
            decided_by=data.get("decided_by"),
            data=dict(data),
        )

    @property
    def approved(self) -> bool:
        return self.status in APPROVED

    @property
    def answered(self) -> bool:
        """A person answered in words (Respond) instead of approving or rejecting it."""
        return self.status == "answered" or self.verdict == "respond"

    @property
    def edited(self) -> bool:
        return self.data.get("edited_payload") is not None

    def raise_unless_approved(self) -> Approval:
        """Return self if it may run; raise Blocked, Answered, Rejected or ApprovalTimeout
        otherwise."""
        if self.approved:
            return self
        if not self.decided:
            raise ApprovalTimeout(self)
        if self.status == "blocked":
            raise Blocked("; ".join(self.reasons) or "blocked by policy", self)
        if self.answered:
            raise Answered(self.reason, self)
        reason = self.reason or (
            f"escalation {self.data.get('escalation_status')}" if self.escalation_id else ""
        )
        raise Rejected(reason, self)


def _error_for(response: httpx.Response) -> CaliberError:
    try:
        detail: Any = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = response.text[:500]
    code = response.status_code
    message = f"{response.request.method} {response.request.url.path}: {code} {detail}"
    kind: type[CaliberError] = {
        401: AuthenticationFailed,
        403: PermissionDenied,
        404: NotFound,
        409: Conflict,
    }.get(code, InvalidRequest if code in (400, 413, 422) else CaliberError)
    return kind(message, status_code=code, detail=detail)


def _run_body(
    workflow: str, input: Mapping[str, Any], idempotency_key: str | None
) -> dict[str, Any]:
    # Made once, before the first try, so retries cannot start a second run.
    return {
        "workflow": workflow,
        "input": dict(input),
        "idempotency_key": idempotency_key or str(uuid.uuid4()),
    }


def _event_body(kind: str, data: Mapping[str, Any] | None, key: str) -> dict[str, Any]:
    body: dict[str, Any] = {"kind": kind, "data": dict(data or {})}
    if key:
        body["idempotency_key"] = key
    return body


def _decision_body(
    verdict: str, reason: str, edited_payload: Mapping[str, Any] | None
) -> dict[str, Any]:
    body: dict[str, Any] = {"verdict": verdict, "reason": reason}
    if edited_payload is not None:
        body["edited_payload"] = dict(edited_payload)
    return body


def _outcome_body(
    metric: str, quality: str, note: str, **extra: str | float | Mapping[str, Any] | None
) -> dict[str, Any]:
    body: dict[str, Any] = {"metric": metric, "quality": quality, "note": note}
    body.update({k: v for k, v in extra.items() if v is not None})
    return body


def _jsonable(value: Any) -> Any:
    return str(value) if isinstance(value, Decimal) else value


class _Base:
    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        agent: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        if not base_url or not token:
            raise ValueError("Caliber needs a base_url and a token")
        self.base_url = base_url.rstrip("/")
        self.agent = agent
        self.timeout = timeout
        self._headers = {
            "Authorization": f"Bearer {token}",
            "User-Agent": "caliber-client/0.1",
            "Accept": "application/json",
        }

    @classmethod
    def _env(cls) -> dict[str, Any]:
        try:
            return {
                "base_url": os.environ["CALIBER_URL"],
                "token": os.environ["CALIBER_TOKEN"],
                "agent": os.environ.get("CALIBER_AGENT"),
            }
        except KeyError as exc:
            raise ValueError(f"{exc.args[0]} is not set") from None

    def _action_body(
        self,
        action_type: str,
        payload: Mapping[str, Any],
        *,
        confidence: float,
        agent: str | None,
        idempotency_key: str | None,
        amount: float | Decimal | None,
        reversible: bool | None,
        context: Mapping[str, Any] | None,
        summary: str | None,
        workflow: str | None,
    ) -> dict[str, Any]:
        agent = agent or self.agent
        if not agent:
            raise ValueError("name the agent: Caliber(..., agent=NAME) or agent=NAME")
        body: dict[str, Any] = {
            "agent": agent,
            "action_type": action_type,
            "payload": dict(payload),
            "confidence": confidence,
            # Made once, before the first try, so retries cannot create a second action.
            "idempotency_key": idempotency_key or str(uuid.uuid4()),
        }
        optional = {
            "amount": _jsonable(amount),
            "reversible": reversible,
            "context": dict(context) if context is not None else None,
            "summary": summary,
            "workflow": workflow,
        }
        body.update({k: v for k, v in optional.items() if v is not None})
        return body

    @staticmethod
    def _wait_timeout(wait: float) -> httpx.Timeout:
        return httpx.Timeout(10.0, read=wait + 15.0)


class Caliber(_Base):
    """Blocking client. `with Caliber(url, token, agent="my-agent") as caliber: ...`"""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        agent: str | None = None,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, token, agent=agent, timeout=timeout)
        self._http = httpx.Client(
            base_url=self.base_url, headers=self._headers, timeout=timeout, transport=transport
        )

    @classmethod
    def from_env(cls) -> Caliber:
        """From CALIBER_URL, CALIBER_TOKEN and (optionally) CALIBER_AGENT."""
        return cls(**cls._env())

    def __enter__(self) -> Caliber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, *, keyed: bool = False, **kwargs: Any) -> Any:
        retry = KEYED_RETRY_STATUSES if keyed else RETRY_STATUSES
        for attempt in range(len(RETRY_DELAYS) + 1):
            try:
                response = self._http.request(method, "/api/v1" + path, **kwargs)
            except (httpx.ConnectError, httpx.RemoteProtocolError) as exc:
                if attempt == len(RETRY_DELAYS):
                    raise CaliberError(f"cannot reach Caliber at {self.base_url}: {exc}") from exc
            else:
                if response.status_code not in retry or attempt == len(RETRY_DELAYS):
                    break
            time.sleep(RETRY_DELAYS[attempt])
        if response.is_success:
            return response.json()
        raise _error_for(response)

    # --- agents ------------------------------------------------------------------------------

    def request_approval(
        self,
        action_type: str,
        payload: Mapping[str, Any],
        *,
        confidence: float,
        agent: str | None = None,
        idempotency_key: str | None = None,
        amount: float | Decimal | None = None,
        reversible: bool | None = None,
        context: Mapping[str, Any] | None = None,
        summary: str | None = None,
        workflow: str | None = None,
    ) -> Approval:
        """Submit an action; policy decides at once (`auto_approved`, `escalated`, `blocked`).
        Pass your own idempotency_key to make a retry of *your* process safe too."""
        body = self._action_body(
            action_type,
            payload,
            confidence=confidence,
            agent=agent,
            idempotency_key=idempotency_key,
            amount=amount,
            reversible=reversible,
            context=context,
            summary=summary,
            workflow=workflow,
        )
        return Approval.from_json(self._call("POST", "/actions", keyed=True, json=body))

    def get(self, action_id: str, *, wait: float = 0) -> Approval:
        params = {"wait": wait} if wait else None
        timeout = self._wait_timeout(wait) if wait else None
        kwargs: dict[str, Any] = {"params": params}
        if timeout is not None:
            kwargs["timeout"] = timeout
        return Approval.from_json(self._call("GET", f"/actions/{action_id}", **kwargs))

    def wait(self, approval: Approval | str, *, timeout: float | None = None) -> Approval:
        """Block until the action is decided (None: however long it takes). Raises
        ApprovalTimeout if `timeout` seconds pass first. Does not raise on rejection."""
        current = approval if isinstance(approval, Approval) else self.get(approval)
        deadline = None if timeout is None else time.monotonic() + timeout
        while not current.decided:
            remaining = LONG_POLL_SECONDS if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                raise ApprovalTimeout(current)
            current = self.get(current.id, wait=min(remaining, LONG_POLL_SECONDS))
        return current

    def report_result(
        self,
        action_id: str,
        *,
        result: Mapping[str, Any] | None = None,
        error: str | None = None,
    ) -> Approval:
        """Tell Caliber the approved action ran (result) or failed (error)."""
        body: dict[str, Any] = (
            {"status": "failed", "error": error}
            if error is not None
            else {"status": "executed", "result": dict(result or {})}
        )
        return Approval.from_json(self._call("POST", f"/actions/{action_id}/result", json=body))

    def require_approval(self, action_type: str, **options: Any) -> Any:
        """Decorator: see caliber_client.require_approval."""
        from .decorators import require_approval

        return require_approval(action_type, client=self, **options)

    # --- reviewers (tokens with reviewer rights) ---------------------------------------------

    def escalations(
        self, *, status: str | None = "open", limit: int = 50, offset: int = 0
    ) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if status:
            params["status"] = status
        return dict(self._call("GET", "/escalations", params=params))

    def decide(
        self,
        escalation_id: str,
        verdict: str,
        *,
        reason: str = "",
        edited_payload: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        body = _decision_body(verdict, reason, edited_payload)
        return dict(self._call("POST", f"/escalations/{escalation_id}/decision", json=body))

    def undo(self, escalation_id: str) -> dict[str, Any]:
        """Take back this person's approval while its action waits out its undo window: it
        runs nothing and is open again. `Conflict` once the window is over (or undone)."""
        return dict(self._call("POST", f"/escalations/{escalation_id}/undo"))

    # --- runs and outcomes -------------------------------------------------------------------

    def start_run(
        self, workflow: str, input: Mapping[str, Any], *, idempotency_key: str | None = None
    ) -> dict[str, Any]:
        """Start a run; the same `idempotency_key` (yours, or one made for this call and
        reused on its retries) returns the same run, never a second."""
        body = _run_body(workflow, input, idempotency_key)
        return dict(self._call("POST", "/runs", keyed=True, json=body))

    def get_run(self, run_id: str) -> dict[str, Any]:
        return dict(self._call("GET", f"/runs/{run_id}"))

    def deliver_event(
        self,
        run_id: str,
        kind: str,
        data: Mapping[str, Any] | None = None,
        *,
        idempotency_key: str = "",
    ) -> dict[str, Any]:
        """Tell a run something happened outside (kind "customer_replied" with data
        {"text": ...}, "payment_cleared"...); a step waiting for it wakes now."""
        body = _event_body(kind, data, idempotency_key)
        return dict(self._call("POST", f"/runs/{run_id}/events", json=body))

    def record_outcome(
        self,
        metric: str,
        quality: str,
        *,
        action_id: str | None = None,
        run_id: str | None = None,
        value: float | None = None,
        note: str = "",
        data: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        body = _outcome_body(
            metric, quality, note, action_id=action_id, run_id=run_id, value=value, data=data
        )
        return dict(self._call("POST", "/outcomes", json=body))


class AsyncCaliber(_Base):
    """asyncio client, the same methods as Caliber, awaited."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        agent: str | None = None,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, token, agent=agent, timeout=timeout)
        self._http = httpx.AsyncClient(
            base_url=self.base_url, headers=self._headers, timeout=timeout, transport=transport
        )

    @classmethod
    def from_env(cls) -> AsyncCaliber:
        return cls(**cls._env())

    async def __aenter__(self) -> AsyncCaliber:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _call(self, method: str, path: str, *, keyed: bool = False, **kwargs: Any) -> Any:
        retry = KEYED_RETRY_STATUSES if keyed else RETRY_STATUSES
        for attempt in range(len(RETRY_DELAYS) + 1):
            try:
                response = await self._http.request(method, "/api/v1" + path, **kwargs)
            except (httpx.ConnectError, httpx.RemoteProtocolError) as exc:
                if attempt == len(RETRY_DELAYS):
                    raise CaliberError(f"cannot reach Caliber at {self.base_url}: {exc}") from exc
            else:
                if response.status_code not in retry or attempt == len(RETRY_DELAYS):
                    break
            await asyncio.sleep(RETRY_DELAYS[attempt])
        if response.is_success:
            return response.json()
        raise _error_for(response)

    async def request_approval(
        self,
        action_type: str,
        payload: Mapping[str, Any],
        *,
        confidence: float,
        agent: str | None = None,
        idempotency_key: str | None = None,
        amount: float | Decimal | None = None,
        reversible: bool | None = None,
        context: Mapping[str, Any] | None = None,
        summary: str | None = None,
        workflow: str | None = None,
    ) -> Approval:
        body = self._action_body(
            action_type,
            payload,
            confidence=confidence,
            agent=agent,
            idempotency_key=idempotency_key,
            amount=amount,
            reversible=reversible,
            context=context,
            summary=summary,
            workflow=workflow,
        )
        return Approval.from_json(await self._call("POST", "/actions", keyed=True, json=body))

    async def get(self, action_id: str, *, wait: float = 0) -> Approval:
        kwargs: dict[str, Any] = {"params": {"wait": wait} if wait else None}
        if wait:
            kwargs["timeout"] = self._wait_timeout(wait)
        return Approval.from_json(await self._call("GET", f"/actions/{action_id}", **kwargs))

    async def wait(self, approval: Approval | str, *, timeout: float | None = None) -> Approval:
        current = approval if isinstance(approval, Approval) else await self.get(approval)
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while not current.decided:
            remaining = LONG_POLL_SECONDS if deadline is None else deadline - loop.time()
            if remaining <= 0:
                raise ApprovalTimeout(current)
            current = await self.get(current.id, wait=min(remaining, LONG_POLL_SECONDS))
        return current

    async def report_result(
        self,
        action_id: str,
        *,
        result: Mapping[str, Any] | None = None,
        error: str | None = None,
    ) -> Approval:
        body: dict[str, Any] = (
            {"status": "failed", "error": error}
            if error is not None
            else {"status": "executed", "result": dict(result or {})}
        )
        data = await self._call("POST", f"/actions/{action_id}/result", json=body)
        return Approval.from_json(data)

    def require_approval(self, action_type: str, **options: Any) -> Any:
        from .decorators import require_approval

        return require_approval(action_type, client=self, **options)

    async def escalations(
        self, *, status: str | None = "open", limit: int = 50, offset: int = 0
    ) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if status:
            params["status"] = status
        return dict(await self._call("GET", "/escalations", params=params))

    async def decide(
        self,
        escalation_id: str,
        verdict: str,
        *,
        reason: str = "",
        edited_payload: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        body = _decision_body(verdict, reason, edited_payload)
        return dict(await self._call("POST", f"/escalations/{escalation_id}/decision", json=body))

    async def undo(self, escalation_id: str) -> dict[str, Any]:
        return dict(await self._call("POST", f"/escalations/{escalation_id}/undo"))

    async def start_run(
        self, workflow: str, input: Mapping[str, Any], *, idempotency_key: str | None = None
    ) -> dict[str, Any]:
        body = _run_body(workflow, input, idempotency_key)
        return dict(await self._call("POST", "/runs", keyed=True, json=body))

    async def get_run(self, run_id: str) -> dict[str, Any]:
        return dict(await self._call("GET", f"/runs/{run_id}"))

    async def deliver_event(
        self,
        run_id: str,
        kind: str,
        data: Mapping[str, Any] | None = None,
        *,
        idempotency_key: str = "",
    ) -> dict[str, Any]:
        body = _event_body(kind, data, idempotency_key)
        return dict(await self._call("POST", f"/runs/{run_id}/events", json=body))

    async def record_outcome(
        self,
        metric: str,
        quality: str,
        *,
        action_id: str | None = None,
        run_id: str | None = None,
        value: float | None = None,
        note: str = "",
        data: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        body = _outcome_body(
            metric, quality, note, action_id=action_id, run_id=run_id, value=value, data=data
        )
        return dict(await self._call("POST", "/outcomes", json=body))
