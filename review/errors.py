"""The styled error pages (templates/400.html, 403.html, 404.html, 500.html) and the guard
that answers junk query strings with 400 before any view sees them."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render


def bad_request(request: HttpRequest, message: str) -> HttpResponse:
    if request.path.startswith("/api/"):
        return JsonResponse({"error": message}, status=400)
    return render(request, "400.html", {"message": message}, status=400)


class RejectNulMiddleware:
    """A NUL in a query string never means anything, and a NUL that reaches PostgreSQL is a
    500 (psycopg refuses to send it): every page answers it with 400 instead, the admin's
    filters and search included."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if _has_nul(request):
            return bad_request(request, "The address has a character no filter can hold.")
        return self.get_response(request)


def _has_nul(request: HttpRequest) -> bool:
    return any("\x00" in k or any("\x00" in v for v in vs) for k, vs in request.GET.lists())
