from typing import Any

from django.contrib import admin, messages
from django.db.models import F, QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html

from .models import IdentitySource, MessageStatus, Notification, SlackIdentity, SlackMessage
from .tasks import enqueue_sync


@admin.register(SlackIdentity)
class SlackIdentityAdmin(admin.ModelAdmin[SlackIdentity]):
    list_display = ["slack_user_id", "user", "source", "email", "looked_up_at"]
    list_filter = ["source"]
    search_fields = ["slack_user_id", "email", "user__username", "user__email"]
    raw_id_fields = ["user"]
    readonly_fields = ["looked_up_at"]

    def save_model(self, request: HttpRequest, obj: SlackIdentity, form: Any, change: bool) -> None:
        # Whatever an admin saves is an explicit link, which email lookups never overwrite.
        obj.source = IdentitySource.ADMIN
        super().save_model(request, obj, form, change)


class AttemptInline(admin.TabularInline[Notification, SlackMessage]):
    model = Notification
    extra = 0
    can_delete = False
    fields = ("created_at", "method", "ok", "error", "permanent", "http_status", "retry_after")
    readonly_fields = fields
    ordering = ["-created_at"]

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(SlackMessage)
class SlackMessageAdmin(admin.ModelAdmin[SlackMessage]):
    list_display = [
        "escalation_link",
        "team",
        "channel",
        "status",
        "error",
        "failures",
        "updated_at",
    ]
    list_filter = ["status", "team"]
    search_fields = ["escalation__id", "channel", "error"]
    inlines = [AttemptInline]
    actions = ["retry_now"]
    readonly_fields = [
        "escalation",
        "team",
        "channel",
        "channel_id",
        "ts",
        "status",
        "sync_requested",
        "synced",
        "requested_at",
        "rendered_hash",
        "lease_until",
        "next_attempt_at",
        "failures",
        "error",
        "failed_at",
        "created_at",
        "updated_at",
    ]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.display(description="escalation")
    def escalation_link(self, obj: SlackMessage) -> str:
        url = reverse("review:detail", args=[obj.escalation_id])
        return format_html('<a href="{}">{}</a>', url, str(obj.escalation_id)[:8])

    @admin.action(description="Retry delivery now (after fixing the channel or token)")
    def retry_now(self, request: HttpRequest, queryset: QuerySet[SlackMessage]) -> None:
        now = timezone.now()
        ids = list(queryset.exclude(status=MessageStatus.SKIPPED).values_list("pk", flat=True))
        SlackMessage.objects.filter(pk__in=ids, ts="").update(status=MessageStatus.PENDING)
        SlackMessage.objects.filter(pk__in=ids).exclude(ts="").update(status=MessageStatus.POSTED)
        SlackMessage.objects.filter(pk__in=ids).update(
            failures=0,
            failed_at=None,
            next_attempt_at=None,
            sync_requested=F("sync_requested") + 1,
            requested_at=now,
            updated_at=now,
        )
        for pk in ids:
            enqueue_sync(pk)
        messages.success(request, f"{len(ids)} message(s) queued for delivery.")
