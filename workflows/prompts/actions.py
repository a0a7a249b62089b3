"""Rendering, pinning, testing, activating and rolling back prompt versions."""

from __future__ import annotations

import string
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.db.models import IntegerField, Subquery
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import Cast
from django.utils import timezone

from ..llm import ModelClient, ModelError, ModelOutputError, RenderedPrompt, get_model
from ..schemas import Classification, Draft, Judgement, ModelOutput, Proposal, Revision, Summary
from .defaults import DEFAULT_EVAL_CASES, DEFAULT_PROMPTS
from .models import (
    ModelCall,
    PromptAudit,
    PromptEvalCase,
    PromptStatus,
    PromptVersion,
    RunPromptPins,
)


class PromptError(Exception):
    """A prompt transition or render that is not allowed; the message says why."""


def render(version: PromptVersion, variables: dict[str, Any]) -> RenderedPrompt:
    try:
        user = string.Template(version.template).substitute(
            {k: "" if v is None else str(v) for k, v in variables.items()}
        )
    except KeyError as exc:
        raise PromptError(f"{version} needs variable {exc.args[0]!r}") from None
    except ValueError as exc:
        raise PromptError(f"{version} template is malformed: {exc}") from None
    return RenderedPrompt(
        name=version.name,
        version=version.version,
        system=version.system,
        user=user,
        model=version.model,
        parameters=dict(version.parameters or {}),
        variables=dict(variables),
    )


def install_default_prompts() -> int:
    """Version 1 of every shipped prompt that has no version yet, active, with its eval cases.

    Done on demand rather than by a data migration so that a database emptied by a test
    flush, or a prompt added in a later release, still gets its default.
    """
    existing = set(PromptVersion.objects.values_list("name", flat=True).distinct())
    installed = 0
    for name, spec in DEFAULT_PROMPTS.items():
        if name in existing:
            continue
        try:
            with transaction.atomic():
                PromptVersion.objects.create(
                    name=name,
                    version=1,
                    system=spec["system"],
                    template=spec["template"],
                    parameters=spec["parameters"],
                    status=PromptStatus.ACTIVE,
                    activated_at=timezone.now(),
                    notes="shipped with Caliber",
                )
                for case in DEFAULT_EVAL_CASES:
                    if case["prompt_name"] == name:
                        PromptEvalCase.objects.get_or_create(
                            prompt_name=name,
                            name=case["name"],
                            defaults={"variables": case["variables"], "expected": case["expected"]},
                        )
            installed += 1
        except IntegrityError:
            # Another process installed it first: exactly what we wanted.
            continue
    return installed


def active_version(name: str) -> PromptVersion:
    version = PromptVersion.objects.filter(name=name, status=PromptStatus.ACTIVE).first()
    if version is None:
        # Installed here or, racing us, by another process: read again either way.
        install_default_prompts()
        version = PromptVersion.objects.filter(name=name, status=PromptStatus.ACTIVE).first()
    if version is None:
        raise PromptError(f"no active version of prompt {name!r}")
    return version


def pin_prompts(*, run: Any, new: bool = False) -> RunPromptPins:
    """Record the active version of every prompt as the ones this run uses, start to end.
    `new`: the run was created in this transaction, so it has no pins yet."""
    versions = dict(
        PromptVersion.objects.filter(status=PromptStatus.ACTIVE).values_list("name", "version")
    )
    if new:
        return RunPromptPins.objects.create(run=run, versions=versions)
    pins, _ = RunPromptPins.objects.get_or_create(run=run, defaults={"versions": versions})
    return pins


def version_for_run(run: Any | None, name: str) -> PromptVersion:
    """The version `run` is pinned to; a run started before pinning pins on first use."""
    if run is None:
        return active_version(name)
    # The pinned version in one query (the pins row and the version it names); only a run
    # not pinned to this prompt yet reads its pins and pins it.
    pinned = RunPromptPins.objects.filter(run=run).annotate(
        number=Cast(KeyTextTransform(name, "versions"), IntegerField())
    )
    found = PromptVersion.objects.filter(
        name=name, version=Subquery(pinned.values("number")[:1])
    ).first()
    if found is not None:
        return found
    pins = RunPromptPins.objects.filter(run=run).first() or pin_prompts(run=run)
    number = pins.versions.get(name)
    if number is None:
        version = active_version(name)
        pins.versions = {**pins.versions, name: version.version}
        pins.save(update_fields=["versions"])
        return version
    return PromptVersion.objects.get(name=name, version=number)


def pinned_versions(runs: list[Any], name: str) -> dict[Any, PromptVersion]:
    """The versions of `name` that `runs` are pinned to, by run id, in two queries (a batch
    of model calls, one per run). A run missing from it is not pinned to `name` yet:
    version_for_run pins it."""
    pins = RunPromptPins.objects.filter(run__in=[run.pk for run in runs])
    numbers = {
        run_id: versions.get(name) for run_id, versions in pins.values_list("run_id", "versions")
    }
    wanted = {n for n in numbers.values() if isinstance(n, int)}
    if not wanted:
        return {}
    by_number = {v.version: v for v in PromptVersion.objects.filter(name=name, version__in=wanted)}
    return {
        run_id: by_number[number]
        for run_id, number in numbers.items()
        if isinstance(number, int) and number in by_number
    }


def cost_usd(model: str, input_tokens: int, output_tokens: int) -> Decimal | None:
    price = settings.MODEL_PRICES.get(model)
    if price is None:
        return None
    usd = (input_tokens * price[0] + output_tokens * price[1]) / 1_000_000
    return Decimal(str(round(usd, 6)))


def model_call(
    *,
    run: Any | None,
    step_name: str,
    prompt: RenderedPrompt,
    model: str,
    ok: bool,
    error: str = "",
    input_tokens: int = 0,
    output_tokens: int = 0,
    latency_ms: float = 0.0,
    attempts: int = 1,
    mean_logprob: float | None = None,
) -> ModelCall:
    """A model call's row, unsaved: a caller saves it, a batch writes its rows in one INSERT."""
    return ModelCall(
        run=run,
        step_name=step_name,
        prompt_name=prompt.name,
        prompt_version=prompt.version,
        model=model,
        ok=ok,
        error=error[:2000],
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cost_usd=cost_usd(model, input_tokens, output_tokens),
        latency_ms=latency_ms,
        attempts=attempts,
        mean_logprob=mean_logprob,
    )


# --- evaluation and the lifecycle ------------------------------------------------------------


def check_expected(data: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    """Every way `data` misses the expected properties (empty: it passes)."""
    failures = []
    for field, rules in expected.items():
        if field not in data:
            failures.append(f"{field} is missing")
            continue
        value = data[field]
        for rule, want in (rules or {}).items():
            ok = True
            if rule == "equals":
                ok = value == want
            elif rule == "in":
                ok = value in want
            elif rule == "min":
                ok = isinstance(value, int | float) and value >= want
            elif rule == "max":
                ok = isinstance(value, int | float) and value <= want
            elif rule == "contains":
                ok = str(want).lower() in str(value).lower()
            elif rule == "not_contains":
                ok = str(want).lower() not in str(value).lower()
            else:
                failures.append(f"{field}: unknown rule {rule!r}")
                continue
            if not ok:
                failures.append(f"{field}={value!r} fails {rule} {want!r}")
    return failures


def _schema_for(name: str) -> type[ModelOutput]:
    schemas: dict[str, type[ModelOutput]] = {
        "triage.classify": Classification,
        "triage.draft_reply": Draft,
        "triage.propose": Proposal,
        "triage.judge_reply": Judgement,
        "triage.revise": Revision,
        "escalation.summary": Summary,
    }
    return schemas.get(name, ModelOutput)


def run_eval_cases(version: PromptVersion, model: ModelClient | None = None) -> dict[str, Any]:
    """Run the prompt's evaluation cases against the configured model; no state changes."""
    model = model or get_model()
    cases = list(PromptEvalCase.objects.filter(prompt_name=version.name))
    results = []
    for case in cases:
        try:
            prompt = render(version, case.variables)
            schema = _schema_for(version.name)
            result = model.generate(prompt=prompt, schema=schema)
            data = schema.model_validate(result.data).model_dump()
            failures = check_expected(data, case.expected)
        except (ModelError, ModelOutputError, PromptError, ValueError) as exc:
            failures = [f"{type(exc).__name__}: {exc}"]
        results.append({"case": case.name, "passed": not failures, "failures": failures})
    return {
        "model": model.name,
        "at": timezone.now().isoformat(),
        "cases": results,
        "passed": bool(results) and all(r["passed"] for r in results),
    }


def _audit(version: PromptVersion, event: str, by: User | None, detail: str = "") -> None:
    PromptAudit.objects.create(
        prompt_name=version.name, version=version.version, event=event, by=by, detail=detail
    )


def evaluate_prompt_version(
    *, version: PromptVersion, by: User | None, model: ModelClient | None = None
) -> dict[str, Any]:
    """draft -> tested when every evaluation case passes; otherwise it stays a draft."""
    if version.status != PromptStatus.DRAFT:
        raise PromptError(f"{version} is {version.status}; only drafts are tested")
    report = run_eval_cases(version, model)
    with transaction.atomic():
        locked = PromptVersion.objects.select_for_update().get(pk=version.pk)
        if locked.status != PromptStatus.DRAFT:
            raise PromptError(f"{locked} changed while it was being tested")
        locked.last_eval = report
        if not report["cases"]:
            report["passed"] = False
            report["error"] = "no evaluation cases exist for this prompt"
        if report["passed"]:
            locked.status = PromptStatus.TESTED
        locked.save(update_fields=["last_eval", "status"])
        failed = [c["case"] for c in report["cases"] if not c["passed"]]
        _audit(
            locked,
            "tested" if report["passed"] else "test_failed",
            by,
            report.get("error", "") or (f"failed: {', '.join(failed)}" if failed else "all passed"),
        )
    version.refresh_from_db()
    return report


def activate_prompt_version(*, version: PromptVersion, by: User | None) -> PromptVersion:
    """tested -> active; the previously active version retires. Runs already started keep
    the versions they pinned."""
    with transaction.atomic():
        locked = PromptVersion.objects.select_for_update().get(pk=version.pk)
        if locked.status != PromptStatus.TESTED:
            raise PromptError(
                f"{locked} is {locked.status}: only a version whose evaluation cases passed "
                "(tested) can be activated"
            )
        previous = (
            PromptVersion.objects.select_for_update()
            .filter(name=locked.name, status=PromptStatus.ACTIVE)
            .first()
        )
        if previous is not None:
            previous.status = PromptStatus.RETIRED
            previous.save(update_fields=["status"])
        locked.status = PromptStatus.ACTIVE
        locked.activated_at = timezone.now()
        locked.save(update_fields=["status", "activated_at"])
        _audit(
            locked,
            "activated",
            by,
            f"replaces v{previous.version}" if previous is not None else "first version",
        )
    return locked


def rollback_prompt(*, name: str, by: User | None) -> PromptVersion:
    """Retire the active version and reactivate the one that was active before it."""
    with transaction.atomic():
        current = (
            PromptVersion.objects.select_for_update()
            .filter(name=name, status=PromptStatus.ACTIVE)
            .first()
        )
        if current is None:
            raise PromptError(f"prompt {name!r} has no active version to roll back")
        previous = (
            PromptVersion.objects.select_for_update()
            .filter(
                name=name,
                status=PromptStatus.RETIRED,
                activated_at__isnull=False,
                activated_at__lt=current.activated_at or timezone.now(),
            )
            .order_by("-activated_at")
            .first()
        )
        if previous is None:
            raise PromptError(f"{current} has no earlier active version to roll back to")
        current.status = PromptStatus.RETIRED
        current.save(update_fields=["status"])
        previous.status = PromptStatus.ACTIVE
        previous.activated_at = timezone.now()
        previous.save(update_fields=["status", "activated_at"])
        _audit(previous, "rolled_back_to", by, f"from v{current.version}")
    return previous
