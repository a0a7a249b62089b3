from django.urls import path

from . import views

app_name = "runs"
urlpatterns = [
    path("", views.run_list, name="list"),
    path("<uuid:pk>/", views.run_detail, name="detail"),
]
