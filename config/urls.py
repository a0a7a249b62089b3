from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from django.views.generic import RedirectView

from review import views as review_views

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="review:queue", permanent=False)),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("healthz", review_views.healthz, name="healthz"),
    path("review/", include("review.urls")),
    path("runs/", include("review.run_urls")),
    path("metrics/", include("review.metrics.urls")),
    path("slack/", include("escalations.slack.urls")),
    path("api/v1/", include("api.urls")),
]

# A lost database answers 503 (JSON on the API); anything else is a 500 in the same shape.
handler500 = "config.errors.server_error"
