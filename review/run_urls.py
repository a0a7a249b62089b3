from django.urls import path

from . import run_views

app_name = "runs"
urlpatterns = [
    path("", run_views.run_list, name="list"),
    path("<uuid:pk>/", run_views.run_detail, name="detail"),
    path("<uuid:pk>/retry/", run_views.run_retry, name="retry"),
    path("<uuid:pk>/rollback/", run_views.run_rollback, name="rollback"),
    path("<uuid:pk>/cancel/", run_views.run_cancel, name="cancel"),
]
