from django.http import HttpRequest

from workflows.llm import model_label


def caliber(request: HttpRequest) -> dict[str, str]:
    return {"model_label": model_label()}
