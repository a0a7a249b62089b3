from __future__ import annotations

import json
from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.forms import ModelForm, ValidationError
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils.html import format_html

from .actions import (
    NotAReviewer,
    check_reviewer,
    create_api_token,
    resend_delivery,
    revoke_api_token,
)
from .models import AgentWebhook, ApiToken, WebhookAttempt, WebhookDelivery


class ApiTokenForm(ModelForm[ApiToken]):
    class Meta:
        model = ApiToken
        fields = ["agent", "name", "reviewer", "user"]

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if self.instance.pk is None and data.get("reviewer"):
            try:
                check_reviewer(data.get("user"))
            except NotAReviewer as exc:
                raise ValidationError({"user": str(exc)}) from None
        return data


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin[ApiToken]):
    form = ApiTokenForm
    list_display = ["prefix", "agent", "name", "reviewer", "user", "created_at", "last_used_at"]
    list_filter = ["reviewer", "agent", ("revoked_at", admin.EmptyFieldListFilter)]
    search_fields = ["prefix", "name", "agent__name"]
    readonly_fields = ["prefix", "created_at", "last_used_at", "revoked_at"]
    actions = ["revoke"]

    def get_fields(self, request: HttpRequest, obj: ApiToken | None = None) -> Any:
        if obj is None:
            return ["agent", "name", "reviewer", "user"]
        return ["prefix", "agent", "name", "reviewer", "user", *self.readonly_fields[1:]]

    def get_readonly_fields(self, request: HttpRequest, obj: ApiToken | None = None) -> list[str]:
        if obj is None:
            return []
        # A token's scope is fixed at birth: to change it, revoke it and create another.
        return ["prefix", "agent", "reviewer", "user", "created_at", "last_used_at", "revoked_at"]

    def save_model(
        self, request: HttpRequest, obj: ApiToken, form: ModelForm[Any], change: bool
    ) -> None:
        if change:
            obj.save(update_fields=["name"])
            return
        token, raw = create_api_token(
            agent=obj.agent, name=obj.name, reviewer=obj.reviewer, user=obj.user
        )
        obj.pk = token.pk
        obj.prefix = token.prefix
        # Kept on the request only, to show once on the next page; never in a cookie or log.
        request._caliber_raw_token = raw  # type: ignore[attr-defined]

    def response_add(
        self, request: HttpRequest, obj: ApiToken, post_url_continue: str | None = None
    ) -> HttpResponse:
        raw = getattr(request, "_caliber_raw_token", None)
        if raw is None:
            return super().response_add(request, obj, post_url_continue)
        token = ApiToken.objects.select_related("agent", "user").get(pk=obj.pk)
        response = TemplateResponse(
            request,
            "admin/api/apitoken/created.html",
            {
                **self.admin_site.each_context(request),
                "token": token,
                "raw": raw,
                "opts": self.model._meta,
                "title": "API token created",
            },
        )
        response["Cache-Control"] = "no-store"
        return response

    @admin.action(description="Revoke the selected tokens")
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiToken]) -> None:
        revoked = sum(revoke_api_token(token=t) for t in queryset)
        self.message_user(request, f"Revoked {revoked} token(s).", messages.SUCCESS)

    def has_delete_permission(self, request: HttpRequest, obj: ApiToken | None = None) -> bool:
        # Revoked tokens stay, so it is always known which token submitted what.
        return False


@admin.register(AgentWebhook)
class AgentWebhookAdmin(admin.ModelAdmin[AgentWebhook]):
    list_display = ["agent", "url", "enabled", "created_at"]
    list_filter = ["enabled"]
    fields = ["agent", "url", "enabled", "secret"]


class WebhookAttemptInline(admin.TabularInline[WebhookAttempt, WebhookDelivery]):
    model = WebhookAttempt
    extra = 0
    can_delete = False
    fields = ["number", "started_at", "status_code", "error", "duration_ms", "response_excerpt"]
    readonly_fields = (
        "number",
        "started_at",
        "status_code",
        "error",
        "duration_ms",
        "response_excerpt",
    )

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(admin.ModelAdmin[WebhookDelivery]):
    list_display = [
        "created_at",
        "event",
        "webhook",
        "status",
        "attempts",
        "last_status_code",
        "delivered_at",
    ]
    list_filter = ["status", "event", "webhook"]
    exclude = ["body"]
    readonly_fields = [
        *(f.name for f in WebhookDelivery._meta.fields if f.name != "body"),
        "pretty_body",
    ]
    inlines = [WebhookAttemptInline]
    actions = ["resend"]

    # The log of what was sent is not edited or deleted by hand; it is re-sent.
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="Body (as signed)")
    def pretty_body(self, obj: WebhookDelivery) -> str:
        try:
            text = json.dumps(json.loads(obj.body), indent=2, ensure_ascii=False)
        except ValueError:
            text = obj.body
        return format_html("<pre>{}</pre>", text)

    @admin.action(description="Re-send the selected deliveries")
    def resend(self, request: HttpRequest, queryset: QuerySet[WebhookDelivery]) -> None:
        for delivery in queryset.select_related("webhook", "resend_of"):
            resend_delivery(delivery=delivery)
        self.message_user(
            request, f"Re-sending {queryset.count()} delivery(ies).", messages.SUCCESS
        )
