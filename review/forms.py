from __future__ import annotations

import json
from typing import Any

from django import forms

from escalations.models import Verdict


class DecisionForm(forms.Form):
    verdict = forms.ChoiceField(choices=Verdict.choices)
    reason = forms.CharField(required=False, max_length=2000, widget=forms.Textarea)
    edited_payload = forms.CharField(required=False, max_length=20000, widget=forms.Textarea)

    def clean_edited_payload(self) -> dict[str, Any] | None:
        raw = self.cleaned_data.get("edited_payload", "").strip()
        if not raw:
            return None
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise forms.ValidationError(f"Not valid JSON: {exc.msg} (line {exc.lineno})") from None
        if not isinstance(value, dict):
            raise forms.ValidationError("The payload must be a JSON object.")
        return value

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if data.get("verdict") == Verdict.REJECT and not data.get("reason", "").strip():
            self.add_error("reason", "Say why you reject it; the agent is told.")
        if data.get("verdict") == Verdict.RESPOND and not data.get("reason", "").strip():
            self.add_error("reason", "Write the answer the agent should get.")
        return data
