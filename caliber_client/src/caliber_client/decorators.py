"""`@require_approval(action_type=...)`: ask Caliber before a function runs.

The call's arguments become the payload. Policy may approve at once; otherwise the call
waits for a person. It then runs with the arguments as approved (a reviewer may have edited
them), its result is reported back, or it raises Rejected / Blocked without running.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any, TypeVar, cast

from .client import Approval, AsyncCaliber, Caliber
from .errors import CaliberError

log = logging.getLogger("caliber_client")

F = TypeVar("F", bound=Callable[..., Any])
Option = Any  # a value, or a callable taking the payload dict and returning the value


def _resolve(option: Option, payload: dict[str, Any]) -> Any:
    return option(payload) if callable(option) else option


def _payload(
    signature: inspect.Signature, exclude: frozenset[str], args: Any, kwargs: Any
) -> tuple[inspect.BoundArguments, dict[str, Any]]:
    bound = signature.bind(*args, **kwargs)
    bound.apply_defaults()
    payload: dict[str, Any] = {}
    for name, value in bound.arguments.items():
        if name in exclude:
            continue
        if signature.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
            payload.update(value)
        else:
            payload[name] = value
    try:
        json.dumps(payload)
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"the arguments must be JSON-serialisable to ask for approval: {exc}"
        ) from None
    return bound, payload


def _call_args(
    signature: inspect.Signature,
    bound: inspect.BoundArguments,
    approved: Mapping[str, Any],
    exclude: frozenset[str],
) -> tuple[list[Any], dict[str, Any]]:
    """The original call with the approved payload's values: an edited value replaces the
    argument, a removed one falls back to its default (or is an error)."""
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    extra = dict(approved)
    var_kw: str | None = None
    for name, param in signature.parameters.items():
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            var_kw = name
            continue
        if param.kind is inspect.Parameter.VAR_POSITIONAL:
            args.extend(bound.arguments.get(name, ()))
            continue
        if name in exclude and name in bound.arguments:
            value = bound.arguments[name]  # never sent (e.g. self): passed through untouched
        elif name in extra:
            value = extra.pop(name)
        elif param.default is not inspect.Parameter.empty:
            value = param.default
        else:
            raise CaliberError(f"the approved payload has no value for required argument {name!r}")
        if param.kind is inspect.Parameter.POSITIONAL_ONLY:
            args.append(value)
        else:
            kwargs[name] = value
    if extra:
        if var_kw is None:
            raise CaliberError(f"the approved payload has arguments the function lacks: {extra}")
        kwargs.update(extra)
    return args, kwargs


def _result_json(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        try:
            json.dumps(value)
            return value
        except (TypeError, ValueError):
            pass
    try:
        json.dumps(value)
        return {"value": value}
    except (TypeError, ValueError):
        return {"repr": repr(value)[:2000]}


def require_approval(
    action_type: str,
    *,
    client: Caliber | AsyncCaliber | None = None,
    confidence: Option = 1.0,
    summary: Option = None,
    context: Option = None,
    amount: Option = None,
    reversible: bool | None = None,
    idempotency_key: Option = None,
    timeout: float | None = None,
    exclude: tuple[str, ...] = ("self", "cls"),
    report: bool = True,
) -> Callable[[F], F]:
    """Wrap a function (sync or async) so every call is approved by Caliber first.

    `confidence`, `summary`, `context`, `amount` and `idempotency_key` are values or
    callables of the payload. Without a client, one is made from CALIBER_URL, CALIBER_TOKEN
    and CALIBER_AGENT. `timeout` bounds the wait for a person (ApprovalTimeout); None waits
    as long as it takes. With `report`, the result (or the exception) is sent back.
    """
    skip = frozenset(exclude)

    def decorate(fn: F) -> F:
        signature = inspect.signature(fn)

        def options(payload: dict[str, Any]) -> dict[str, Any]:
            value = _resolve(amount, payload)
            return {
                "confidence": float(_resolve(confidence, payload)),
                "summary": _resolve(summary, payload),
                "context": _resolve(context, payload),
                "amount": Decimal(str(value)) if value is not None else None,
                "reversible": reversible,
                "idempotency_key": _resolve(idempotency_key, payload),
            }

        def settled(approval: Approval) -> Approval:
            if approval.status in ("executed", "failed"):
                raise CaliberError(
                    f"action {approval.id} was already run ({approval.status}); not running "
                    "it twice (same idempotency key?)"
                )
            return approval.raise_unless_approved()

        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                caliber = client
                if caliber is None:
                    caliber = AsyncCaliber.from_env()
                elif isinstance(caliber, Caliber):
                    raise TypeError("an async function needs an AsyncCaliber client")
                bound, payload = _payload(signature, skip, args, kwargs)
                approval = await caliber.request_approval(action_type, payload, **options(payload))
                approval = settled(await caliber.wait(approval, timeout=timeout))
                call_args, call_kwargs = _call_args(
                    signature, bound, approval.payload_to_execute, skip
                )
                try:
                    value = await fn(*call_args, **call_kwargs)
                except BaseException as exc:
                    if report:
                        await _report_async(caliber, approval, error=f"{type(exc).__name__}: {exc}")
                    raise
                if report:
                    await _report_async(caliber, approval, result=_result_json(value))
                return value

            return cast(F, async_wrapper)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            caliber = client
            if caliber is None:
                caliber = Caliber.from_env()
            elif isinstance(caliber, AsyncCaliber):
                raise TypeError("a plain function needs a Caliber client, not AsyncCaliber")
            bound, payload = _payload(signature, skip, args, kwargs)
            approval = caliber.request_approval(action_type, payload, **options(payload))
            approval = settled(caliber.wait(approval, timeout=timeout))
            call_args, call_kwargs = _call_args(signature, bound, approval.payload_to_execute, skip)
            try:
                value = fn(*call_args, **call_kwargs)
            except BaseException as exc:
                if report:
                    _report(caliber, approval, error=f"{type(exc).__name__}: {exc}")
                raise
            if report:
                _report(caliber, approval, result=_result_json(value))
            return value

        return cast(F, wrapper)

    return decorate


def _report(caliber: Caliber, approval: Approval, **outcome: Any) -> None:
    try:
        caliber.report_result(approval.id, **outcome)
    except CaliberError:
        # The function's own outcome matters more than the report about it.
        log.warning("could not report the result of action %s to Caliber", approval.id)


async def _report_async(caliber: AsyncCaliber, approval: Approval, **outcome: Any) -> None:
    try:
        await caliber.report_result(approval.id, **outcome)
    except CaliberError:
        log.warning("could not report the result of action %s to Caliber", approval.id)
