"""The item filter of a queue page: one form, one queryset, shared by the list, bulk and export."""

from __future__ import annotations

import json
from typing import Any, cast
from urllib.parse import urlencode

from django import forms
from django.db.models import Exists, OuterRef, Q, QuerySet
from django.db.models.fields.json import KeyTextTransform

from curation.models import Item, ItemOutput, Queue, Response, item_is_complete_q


class ItemFilterForm(forms.Form):
    STATUS_CHOICES = [
        ("", "All items"),
        ("todo", "To do (for me)"),
        ("open", "Open (needs submissions)"),
        ("complete", "Complete"),
        ("draft", "My drafts"),
        ("submitted", "Submitted by me"),
        ("discarded", "Discarded by me"),
        ("failed", "Failed requests"),
    ]
    status = forms.ChoiceField(choices=STATUS_CHOICES, required=False)
    gold = forms.ChoiceField(
        choices=[("", "Gold or not"), ("gold", "Gold only"), ("not_gold", "Not gold")],
        required=False,
    )
    model = forms.ChoiceField(choices=[("", "Any model")], required=False)
    question = forms.ChoiceField(choices=[("", "Any question")], required=False)
    value = forms.CharField(required=False, max_length=500)
    answer_by = forms.ChoiceField(
        choices=[("", "answered by a reviewer"), ("model", "answered by the model")],
        required=False,
    )
    disagreement = forms.ChoiceField(
        choices=[
            ("", "Agreement: any"),
            ("model", "Reviewer disagrees with model"),
            ("reviewers", "Reviewers disagree"),
        ],
        required=False,
    )
    q = forms.CharField(required=False, max_length=500, label="Search")

    FIELDS = ("status", "gold", "model", "question", "value", "answer_by", "disagreement", "q")

    def __init__(self, data: Any = None, *, queue: Queue) -> None:
        super().__init__(data)
        self.queue = queue
        models = list(
            dict.fromkeys(queue.queue_batches.order_by("position").values_list("model", flat=True))
        )
        # self.fields holds plain Fields to the type checker; these two are the ChoiceFields above.
        model_field = cast(forms.ChoiceField, self.fields["model"])
        model_field.choices = [("", "Any model")] + [(m, m) for m in models if m]
        question_field = cast(forms.ChoiceField, self.fields["question"])
        question_field.choices = [("", "Any question")] + [
            (q.key, q.text) for q in queue.schema.questions.all()
        ]

    def params(self) -> dict[str, str]:
        """The filter's non-empty values, to carry in links, forms and bulk-action records."""
        if not self.is_valid():
            return {}
        return {
            name: str(self.cleaned_data[name]) for name in self.FIELDS if self.cleaned_data[name]
        }

    def querystring(self) -> str:
        params = self.params()
        return urlencode(params) if params else ""

    def apply(self, items: QuerySet[Item], *, user: Any) -> QuerySet[Item]:
        if not self.is_valid():
            return items
        data = self.cleaned_data
        mine = Response.objects.filter(item=OuterRef("pk"), reviewer=user)
        status = data["status"]
        if status == "todo":
            items = items.exclude(item_is_complete_q()).exclude(
                Exists(mine.filter(status__in=[Response.Status.SUBMITTED, "discarded"]))
            )
        elif status == "open":
            items = items.exclude(item_is_complete_q())
        elif status == "complete":
            items = items.filter(item_is_complete_q())
        elif status in Response.Status.values:
            items = items.filter(Exists(mine.filter(status=status)))
        elif status == "failed":
            items = items.filter(
                Exists(ItemOutput.objects.filter(item=OuterRef("pk"), error__isnull=False))
            )

        if data["gold"] == "gold":
            items = items.filter(gold_starred_at__isnull=False)
        elif data["gold"] == "not_gold":
            items = items.filter(gold_starred_at__isnull=True)

        outputs = ItemOutput.objects.filter(item=OuterRef("pk"))
        if data["model"]:
            outputs = outputs.filter(model=data["model"])
            items = items.filter(Exists(outputs.filter(error__isnull=True)))

        if data["question"] and data["value"]:
            match = _answer_matches(data["question"], data["value"])
            if data["answer_by"] == "model":
                items = items.filter(Exists(outputs.annotate(answer=match[0]).filter(match[1])))
            else:
                submitted = Response.objects.filter(
                    item=OuterRef("pk"), status=Response.Status.SUBMITTED
                )
                items = items.filter(Exists(submitted.annotate(answer=match[0]).filter(match[1])))

        if data["disagreement"] == "model":
            items = items.filter(
                Exists(
                    Response.objects.filter(
                        item=OuterRef("pk"),
                        status=Response.Status.SUBMITTED,
                        disagrees_with_model=True,
                    )
                )
            )
        elif data["disagreement"] == "reviewers":
            items = items.filter(reviewers_disagree=True)

        if data["q"]:
            text = data["q"]
            items = items.filter(
                Q(search_text__icontains=text)
                | Exists(ItemOutput.objects.filter(item=OuterRef("pk"), text__icontains=text))
            )
        return items


def _answer_matches(question: str, value: str) -> tuple[KeyTextTransform, Q]:
    # A scalar answer equals the value (any case); a list answer (multi-choice, ranking) holds it.
    answer = KeyTextTransform(question, "answers")
    quoted = json.dumps(value, ensure_ascii=False)
    return answer, Q(answer__iexact=value) | Q(answer__icontains=quoted)
