from django.urls import path

from . import views

app_name = "slack"
urlpatterns = [
    path("interactions/", views.interactions_view, name="interactions"),
]
