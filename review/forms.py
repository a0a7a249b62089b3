"""The decision form (approve, edit then approve, reject, respond) and reassignment."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from django import forms
from django.utils import timezone

from escalations.models import Team, Verdict
from escalations.rendering import Proposal
from workflows.models import Action
from workflows.tools import ActionType, get_action_type

EDIT = "edit"
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_]{1,64}")
_SCALARS = (str, int, float, bool, type(None))
_LONG_TEXT = 80


def _editable_as_fields(payload: dict[str, Any], proposal: Proposal | None) -> bool:
    if proposal is not None and not proposal.is_tree:
        # The rendering names the fields a person edits; the rest is kept as proposed.
        return bool(proposal.edit_fields)
    return all(isinstance(v, _SCALARS) for v in payload.values())


def payload_digest(payload: dict[str, Any]) -> str:
    """Names one version of a payload: a confirmation is for the version it showed."""
    raw = json.dumps(payload, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


class DecisionForm(forms.Form):
    """One form, four buttons. "edit" approves the reviewer's version of the payload.

    The fields are the ones the action's rendering shows (an email's body, subject and
    recipient; a CRM update's proposed values; a routing's destination), the body first in
    a wide editor; keys it does not show are kept as proposed. A payload rendered as a tree
    is edited field by field if its values are plain, else as JSON. Either way the tool's
    declaration validates the result before anything is recorded, and the edited version
    is what executes.

    Approving an irreversible action takes a second step: the first submit comes back with
    what will run (and the diff, if edited) and a confirm button; only a submit carrying
    the digest of that same version approves it (`needs_confirmation`).
    """

    verdict = forms.ChoiceField(choices=[*Verdict.choices, (EDIT, "Approve edited")])
    reason = forms.CharField(required=False, max_length=2000, widget=forms.Textarea)
    edited_payload = forms.CharField(
        required=False,
        max_length=20000,
        widget=forms.Textarea(attrs={"rows": 10, "class": "mono", "spellcheck": "false"}),
    )
    confirm = forms.CharField(required=False, max_length=64, widget=forms.HiddenInput)

    def __init__(
        self,
        *args: Any,
        payload: dict[str, Any],
        tool: ActionType,
        proposal: Proposal | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.payload = payload
        self.tool = tool
        self.as_fields = _editable_as_fields(payload, proposal)
        self.payload_keys: list[tuple[str, str]] = []
        if self.as_fields:
            del self.fields["edited_payload"]
            if proposal is not None and not proposal.is_tree:
                shown = [(f.key, f.label, f.multiline) for f in proposal.edit_fields]
            else:
                shown = [(k, k, False) for k in payload]
            focus = proposal.focus_key if proposal is not None else None
            positions = {k: i for i, k in enumerate(payload)}
            for key, label, multiline in shown:
                # Named after the key where it is a plain identifier (stable, readable in
                # a POST); otherwise by position.
                name = f"p__{key}" if _PLAIN_KEY.fullmatch(key) else f"p_{positions[key]}"
                self.payload_keys.append((name, key))
                self.fields[name] = self._field_for(key, payload[key], multiline=multiline)
                self.fields[name].label = label
                if key == focus:
                    self.fields[name].widget.attrs["data-focus"] = "1"
        else:
            self.fields["edited_payload"].initial = json.dumps(
                payload, indent=2, ensure_ascii=False
            )

    def _field_for(self, key: str, value: Any, *, multiline: bool = False) -> forms.Field:
        required = key in self.tool.required_fields
        field: forms.Field
        if isinstance(value, bool):
            field = forms.BooleanField(required=False)
        elif isinstance(value, int):
            field = forms.IntegerField(required=False)
        elif isinstance(value, float):
            field = forms.FloatField(required=False)
        elif multiline or (isinstance(value, str) and (len(value) > _LONG_TEXT or "\n" in value)):
            field = forms.CharField(
                required=False,
                max_length=20000,
                strip=False,
                widget=forms.Textarea(attrs={"rows": 14 if multiline else 6, "class": "wide"}),
            )
        else:
            field = forms.CharField(required=False, max_length=2000)
        field.label = key
        field.initial = value
        field.widget.attrs["data-required"] = "1" if required else ""
        return field

    @property
    def payload_fields(self) -> list[forms.BoundField]:
        return [self[name] for name, _ in self.payload_keys]

    def _edited_from_fields(self, data: dict[str, Any]) -> dict[str, Any]:
        # Keys the form does not show are kept as proposed, in their place.
        edited: dict[str, Any] = dict(self.payload)
        for name, key in self.payload_keys:
            value = data.get(name)
            original = self.payload[key]
            if isinstance(original, str) and value is None:
                value = ""
            if original is None and value == "":
                value = None
            if (
                value is None
                and isinstance(original, (int, float))
                and key in self.tool.required_fields
            ):
                self.add_error(name, f"{key} is required.")
            if isinstance(value, str) and not value.strip() and key in self.tool.required_fields:
                self.add_error(name, f"{key} cannot be empty.")
            if isinstance(value, str) and isinstance(original, str):
                # Browsers post textareas with CRLF line ends; the payload has LF.
                value = value.replace("\r\n", "\n")
                if value.strip() == original.strip():
                    value = original
            edited[key] = value
        return edited

    def _edited_from_json(self, raw: str) -> dict[str, Any] | None:
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            self.add_error(
                "edited_payload", f"Not valid JSON: {exc.msg} (line {exc.lineno}, col {exc.colno})"
            )
            return None
        if not isinstance(value, dict):
            self.add_error("edited_payload", "The payload must be a JSON object.")
            return None
        return value

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        verdict = data.get("verdict")
        data["edited"] = None
        if verdict == EDIT:
            edited: dict[str, Any] | None
            if self.as_fields:
                edited = self._edited_from_fields(data)
            else:
                edited = self._edited_from_json(data.get("edited_payload", "").strip())
            # Checked by decide_escalation (the action type's declaration; an unchanged
            # "edit" is a plain approval), whatever the channel.
            data["edited"] = edited
            data["verdict"] = Verdict.APPROVE
        elif verdict:
            data["verdict"] = Verdict(verdict)
        return data

    @property
    def version_to_run(self) -> dict[str, Any]:
        edited = self.cleaned_data.get("edited")
        return edited if edited is not None else self.payload

    @property
    def needs_confirmation(self) -> bool:
        """An irreversible approval not yet confirmed for exactly this version."""
        if self.tool.reversible or self.cleaned_data.get("verdict") != Verdict.APPROVE:
            return False
        return self.cleaned_data.get("confirm") != payload_digest(self.version_to_run)

    @property
    def confirm_digest(self) -> str:
        return payload_digest(self.version_to_run)

    def success_message(self, action: Action) -> str:
        """What happens next, as it is: never a promise the engine may not keep."""
        verdict = self.cleaned_data["verdict"]
        tool = get_action_type(action.action_type)
        if verdict == Verdict.APPROVE:
            changed = self.cleaned_data["edited"] not in (None, self.payload)
            edited = " with your edits" if changed else ""
            if action.execute_after is not None:
                left = max(round((action.execute_after - timezone.now()).total_seconds()), 0)
                return f"Approved{edited}: queued, it executes in {left} s unless you undo it."
            return f"Approved{edited}: queued to execute now."
        if verdict == Verdict.RESPOND:
            return (
                "Answered: the agent revises its proposal with your words; the revision comes "
                "back to the queue (or runs, if policy lets it)."
            )
        if tool.fallback is not None and action.run_id is not None:
            return f"Rejected: it will not run. Next: {tool.fallback_label.lower()} (you)."
        return "Rejected: it will not run; the agent is told why."


class ReassignForm(forms.Form):
    team = forms.ModelChoiceField(queryset=Team.objects.none(), empty_label="Choose a team…")
    note = forms.CharField(required=False, max_length=500)

    def __init__(self, *args: Any, exclude_team_id: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        field = self.fields["team"]
        assert isinstance(field, forms.ModelChoiceField)
        field.queryset = Team.objects.exclude(pk=exclude_team_id)
