from django.urls import path

from . import views

app_name = "review"
urlpatterns = [
    path("", views.queue, name="queue"),
    path("bulk/", views.bulk_decide, name="bulk"),
    path("bulk/queued/", views.bulk_done, name="bulk_done"),
    path("<uuid:pk>/", views.detail, name="detail"),
    path("<uuid:pk>/decide/", views.decide, name="decide"),
    path("<uuid:pk>/claim/", views.claim, name="claim"),
    path("<uuid:pk>/release/", views.release, name="release"),
    path("<uuid:pk>/reassign/", views.reassign, name="reassign"),
    path("<uuid:pk>/undo/", views.undo, name="undo"),
]
