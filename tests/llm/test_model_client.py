"""The OpenAI client against a local OpenAI-compatible server: the real `openai` package."""

from unittest import mock

import openai
import pytest
from openai.resources.chat.completions import Completions

from tests.fakes.openai_server import Scripted
from tests.support.clock import FakeClock
from workflows.agents import call_model
from workflows.llm import ModelError, ModelOutputError, OpenAIModel, get_model
from workflows.prompts.models import ModelCall
from workflows.schemas import Classification

pytestmark = pytest.mark.django_db

VARS = {"subject": "Charged twice", "body": "Please fix it"}


@pytest.fixture
def clock():
    """The client's budget clock, moved only by its own waits (and timeouts, below)."""
    fake = FakeClock()
    with mock.patch("workflows.llm.CLOCK", fake):
        yield fake


def classify(**kw):
    return call_model(
        model=get_model(),
        run=None,
        step_name="classify",
        prompt_name="triage.classify",
        variables=VARS,
        schema=Classification,
        **kw,
    )


def test_with_a_base_url_the_openai_client_is_used(fake_openai):
    assert isinstance(get_model(), OpenAIModel)


def test_structured_output_is_requested_and_parsed(fake_openai):
    out, result = classify()
    assert out.category == "billing" and out.confidence == 0.91
    request = fake_openai.requests[0]
    assert request["response_format"]["type"] == "json_schema"
    assert request["response_format"]["json_schema"]["name"] == "Classification"
    assert request["response_format"]["json_schema"]["strict"] is True
    assert request["model"] == "gpt-4o-mini"
    assert request["messages"][0]["role"] == "system"
    assert "Charged twice" in request["messages"][1]["content"]
    assert result.mean_logprob == pytest.approx(-0.05)


def test_a_429_is_retried_after_the_time_it_asks_for(fake_openai, clock):
    fake_openai.script(Scripted(status=429, headers={"retry-after": "0.4"}))
    _, result = classify()
    assert clock.sleeps == [0.4]
    assert result.attempts == 2
    assert len(fake_openai.requests) == 2
    assert ModelCall.objects.get(ok=True).attempts == 2


def test_5xx_are_retried_on_the_delivery_backoff_then_succeed(fake_openai, clock):
    fake_openai.script(Scripted(status=500), Scripted(status=503))
    with mock.patch("workflows.retry.random.uniform", return_value=1.0):  # no jitter
        _, result = classify()
    assert result.attempts == 3
    assert clock.sleeps == [1.0, 2.0]  # workflows.llm.MODEL_RETRY


def test_a_retry_after_beyond_the_budget_gives_up_at_once(fake_openai, settings):
    fake_openai.script(Scripted(status=429, headers={"retry-after": "3600"}))
    with pytest.raises(ModelError, match=r"would exceed the 10\.0s budget"):
        classify()
    assert len(fake_openai.requests) == 1
    assert ModelCall.objects.get().ok is False


def test_persistent_500s_exhaust_the_attempts(fake_openai, settings):
    settings.OPENAI_MAX_ATTEMPTS = 3
    fake_openai.script(*[Scripted(status=500)] * 5)
    with pytest.raises(ModelError, match="after 3 attempts"):
        classify()
    assert len(fake_openai.requests) == 3


def test_timeouts_exhaust_the_budget(fake_openai, settings, clock):
    settings.OPENAI_TIMEOUT = 0.3
    settings.OPENAI_BUDGET_SECONDS = 1.5
    fake_openai.script(*[Scripted(content={}, delay=1.0)] * 6)
    real_create = Completions.create
    timeouts: list[float] = []

    def timed_out_costs_its_timeout(self, **kwargs):
        # On the budget clock a request that timed out took its whole timeout.
        try:
            return real_create(self, **kwargs)
        except openai.APITimeoutError:
            timeouts.append(kwargs["timeout"])
            clock.advance(kwargs["timeout"])
            raise

    started = clock.monotonic()
    with (
        mock.patch.object(Completions, "create", timed_out_costs_its_timeout),
        mock.patch("workflows.retry.random.uniform", return_value=1.0),
        pytest.raises(ModelError, match="budget"),
    ):
        classify()
    # Bounded by the budget, not by attempts x timeout x backoff: 0.3 s, a 1 s wait, and
    # the last request cut to the 0.2 s left.
    assert timeouts == [0.3, pytest.approx(0.2)]
    assert clock.sleeps == [1.0]
    assert clock.monotonic() - started == pytest.approx(1.5)


def test_a_4xx_other_than_429_is_not_retried(fake_openai):
    fake_openai.script(Scripted(status=400))
    with pytest.raises(ModelError, match="400"):
        classify()
    assert len(fake_openai.requests) == 1


def test_invalid_json_is_fed_back_and_repaired(fake_openai):
    fake_openai.script(Scripted(content="{not json"))
    out, _ = classify()
    assert out.category == "billing"
    repair = fake_openai.requests[1]["messages"]
    assert repair[-2] == {"role": "assistant", "content": "{not json"}
    assert "not valid JSON" in repair[-1]["content"]


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        ({"category": "billing", "urgency": "normal", "confidence": 0.9}, "uncertain_about"),
        (
            {
                "category": "billing",
                "urgency": "normal",
                "confidence": 0.9,
                "uncertain_about": "",
                "risk": "low",
            },
            "risk",
        ),
        (
            {"category": "refunds", "urgency": "normal", "confidence": 0.9, "uncertain_about": ""},
            "category",
        ),
        (
            {"category": "billing", "urgency": "normal", "confidence": 7, "uncertain_about": ""},
            "confidence",
        ),
        ("[1, 2, 3]", "not an object"),
        ("x" * 30_000, "limit is 20000"),
    ],
)
def test_malformed_output_is_refused_until_repairs_run_out(fake_openai, bad, why):
    fake_openai.script(*[Scripted(content=bad)] * 3)
    with pytest.raises(ModelOutputError, match="the step needs attention") as exc:
        classify()
    assert why in str(exc.value)
    assert len(fake_openai.requests) == 3
    assert ModelCall.objects.filter(ok=False).count() == 3


def test_tokens_and_cost_are_accounted(fake_openai):
    fake_openai.prompt_tokens, fake_openai.completion_tokens = 1_000_000, 500_000
    classify()
    call = ModelCall.objects.get()
    assert (call.input_tokens, call.output_tokens) == (1_000_000, 500_000)
    # gpt-4o-mini: $0.15 per 1M input, $0.60 per 1M output.
    assert float(call.cost_usd) == pytest.approx(0.15 + 0.30)
    assert call.prompt_name == "triage.classify" and call.prompt_version == 1


def test_a_model_without_a_price_is_recorded_with_no_cost(fake_openai, settings):
    settings.OPENAI_MODEL = "my-local-llama"
    classify()
    assert ModelCall.objects.get().cost_usd is None
