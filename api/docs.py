"""The API docs page, self-hosted: Swagger UI from django-ninja's own bundled files, served by
this app, so it works offline and under the app's CSP (no CDN, no inline script)."""

from __future__ import annotations

import json
import mimetypes
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ninja
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.cache import cache_control
from django.views.decorators.http import require_GET
from ninja.openapi.docs import DocsBase

if TYPE_CHECKING:
    from ninja import NinjaAPI

NINJA_STATIC = Path(ninja.__file__).resolve().parent / "static" / "ninja"
ASSETS = frozenset({"swagger-ui.css", "swagger-ui-bundle.js", "swagger-ui-init.js", "favicon.png"})


class SelfHostedSwagger(DocsBase):
    def render_page(self, request: HttpRequest, api: NinjaAPI, **kwargs: Any) -> HttpResponse:
        swagger_settings = {
            "url": self.get_openapi_url(api, kwargs),
            "layout": "BaseLayout",
            "deepLinking": True,
            # The online validator badge would call out to a third-party service.
            "validatorUrl": None,
            "persistAuthorization": False,
        }
        return render(
            request,
            "api/docs.html",
            {
                "title": api.title,
                # Inside a <script> data block "</" must not appear literally.
                "swagger_settings": json.dumps(swagger_settings).replace("<", "\\u003c"),
            },
        )


@require_GET
@cache_control(public=True, max_age=86400)
def docs_asset(request: HttpRequest, name: str) -> FileResponse:
    if name not in ASSETS:
        raise Http404("No such asset")
    content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
    return FileResponse((NINJA_STATIC / name).open("rb"), content_type=content_type)
