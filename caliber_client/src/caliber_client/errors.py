"""What can go wrong, as exceptions an agent can catch by meaning."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .client import Approval


class CaliberError(Exception):
    """The API refused a request or could not be reached. `status_code` is None for the
    latter; `detail` is the API's explanation (a string, or a list of field errors)."""

    def __init__(self, message: str, *, status_code: int | None = None, detail: Any = None):
        super().__init__(message)
        self.status_code = status_code
        self.detail = detail


class AuthenticationFailed(CaliberError):
    """401: the token is missing, wrong or revoked."""


class PermissionDenied(CaliberError):
    """403: the token may not do that (another agent, or no reviewer rights)."""


class NotFound(CaliberError):
    """404: no such thing, or not this token's to see."""


class Conflict(CaliberError):
    """409: already decided, already reported, or an idempotency key reused."""


class InvalidRequest(CaliberError):
    """400/413/422: the request itself is wrong; `detail` names the fields."""


class Rejected(Exception):
    """The action may not run: a person rejected it (or answered instead: Answered), or
    policy blocked it. `reason` is what the agent should know; `approval` has everything else."""

    def __init__(self, reason: str, approval: Approval):
        super().__init__(reason or f"action {approval.id} was {approval.status}")
        self.reason = reason
        self.approval = approval

    @property
    def verdict(self) -> str | None:
        return self.approval.verdict


class Answered(Rejected):
    """A person answered instead of approving or rejecting (status `answered`, verdict
    `respond`): the action does not run as proposed; `answer` is what they said to do
    (e.g. "ask for their order number first"). A Rejected, so `except Rejected` still
    stops the call; catch it first to act on the answer."""

    @property
    def answer(self) -> str:
        return self.reason


class Blocked(Rejected):
    """Policy refused the action outright; no person was asked."""


class ApprovalTimeout(TimeoutError):
    """Nobody decided within the time given. The action stays pending: wait again later."""

    def __init__(self, approval: Approval):
        super().__init__(f"action {approval.id} is still {approval.status}")
        self.approval = approval
