from django.urls import path

from . import views

app_name = "metrics"
urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("prometheus", views.prometheus, name="prometheus"),
    path("actions/<uuid:pk>/judge/", views.judge_action, name="judge"),
]
