from django.urls import URLPattern

app_name = "slack"
urlpatterns: list[URLPattern] = []
