from collections.abc import Iterator

import pytest

from tests.fakes.openai_server import FakeOpenAI


@pytest.fixture
def fake_openai(settings) -> Iterator[FakeOpenAI]:
    """The real openai client, pointed at a local OpenAI-compatible server."""
    with FakeOpenAI() as server:
        settings.OPENAI_BASE_URL = server.base_url
        settings.OPENAI_API_KEY = "sk-test"
        settings.OPENAI_MODEL = "gpt-4o-mini"
        settings.OPENAI_TIMEOUT = 2.0
        settings.OPENAI_MAX_ATTEMPTS = 4
        settings.OPENAI_BUDGET_SECONDS = 10.0
        yield server
