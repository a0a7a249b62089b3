from django.urls import URLPattern, URLResolver, path

from .docs import docs_asset
from .views import api

urlpatterns: list[URLPattern | URLResolver] = [
    path("docs/assets/<str:name>", docs_asset, name="api-docs-asset"),
    path("", api.urls),
]
