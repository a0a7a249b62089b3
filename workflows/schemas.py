"""The shapes agent steps ask the model for. Output that does not validate never acts."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field


class ModelOutput(BaseModel):
    # Extra fields are an error, not noise: a model adding {"risk": "low"} is refused.
    model_config = ConfigDict(extra="forbid")
    # OpenAI's strict structured outputs need closed objects everywhere; free-form payloads
    # (a proposal's) cannot be, so those schemas are sent non-strict and validated here.
    strict_schema: ClassVar[bool] = True


class Classification(ModelOutput):
    category: Literal["billing", "bug", "account", "shipping", "other"]
    urgency: Literal["low", "normal", "high"]
    confidence: float = Field(ge=0, le=1)
    uncertain_about: str = Field(max_length=500)


class Draft(ModelOutput):
    reply: str = Field(min_length=1, max_length=4000)
    confidence: float = Field(ge=0, le=1)
    uncertain_about: str = Field(max_length=500)


class ProposedAction(ModelOutput):
    action_type: str = Field(min_length=1, max_length=100)
    payload: dict[str, Any]
    confidence: float = Field(ge=0, le=1)
    rationale: str = Field(max_length=1000)


class Proposal(ModelOutput):
    strict_schema: ClassVar[bool] = False
    actions: list[ProposedAction] = Field(max_length=10)


class Revision(ModelOutput):
    """The agent's proposal again, revised after a person answered it (Respond)."""

    strict_schema: ClassVar[bool] = False
    payload: dict[str, Any]
    confidence: float = Field(ge=0, le=1)
    rationale: str = Field(max_length=1000)


class Judgement(ModelOutput):
    ok: bool
    problems: list[str] = Field(max_length=20)


class Summary(ModelOutput):
    summary: str = Field(min_length=1, max_length=1500)


def response_format(schema: type[ModelOutput]) -> dict[str, Any]:
    return {
        "type": "json_schema",
        "json_schema": {
            "name": schema.__name__,
            "schema": schema.model_json_schema(),
            "strict": schema.strict_schema,
        },
    }
