from django.http import HttpRequest

from workflows.llm import get_model


def caliber(request: HttpRequest) -> dict[str, str]:
    return {"model_label": get_model().label}
