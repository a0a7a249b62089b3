"""Autonomy policies, one module per seam: compiled (the cached, compiled policy set),
evaluation (may this action run alone?), what_if (a draft replayed against history)."""

from .compiled import (
    AgentState,
    CompiledPolicy,
    PolicySet,
    clear_cache,
    compile_policy_set,
    current_policy_set,
    current_threshold,
    policy_as_evaluated,
)
from .evaluation import (
    PolicyDecision,
    RecentCounter,
    amount_of,
    count_recent_autonomous,
    effective_audit_rate,
    evaluate,
)
from .what_if import WhatIfExample, WhatIfReport, what_if

__all__ = [
    "AgentState",
    "CompiledPolicy",
    "PolicyDecision",
    "PolicySet",
    "RecentCounter",
    "WhatIfExample",
    "WhatIfReport",
    "amount_of",
    "clear_cache",
    "compile_policy_set",
    "count_recent_autonomous",
    "current_policy_set",
    "current_threshold",
    "effective_audit_rate",
    "evaluate",
    "policy_as_evaluated",
    "what_if",
]
