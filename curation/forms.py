"""Forms of the reviewer pages and the staff's queue creation."""

from __future__ import annotations

import json
from typing import Any, cast

from django import forms
from django.db.models import QuerySet

from batches.models import Batch
from curation.models import ConquestSchema, ItemOutput, Question, Queue


def answer_field_name(question: Question) -> str:
    return f"answer-{question.key}"


def rank_field_name(question: Question, index: int) -> str:
    return f"answer-{question.key}-rank-{index}"


class ResponseForm(forms.Form):
    """A reviewer's answers to a schema's questions, the edited output and notes."""

    edited_output = forms.CharField(
        required=False, strip=False, widget=forms.Textarea(attrs={"rows": 6})
    )
    notes = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}))
    base_output = forms.TypedChoiceField(coerce=int, required=False, empty_value=None)
    # When the page was rendered (Unix seconds): the time spent on this visit.
    opened_at = forms.FloatField(required=False, widget=forms.HiddenInput)

    def __init__(
        self,
        data: Any = None,
        *,
        questions: list[Question],
        outputs: list[ItemOutput],
        initial: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(data, initial=initial)
        self.questions = questions
        # self.fields holds plain Fields to the type checker; this is the TypedChoiceField above.
        cast(forms.TypedChoiceField, self.fields["base_output"]).choices = [
            (output.pk, output.model or f"output {output.position + 1}") for output in outputs
        ]
        for question in questions:
            if question.type == Question.Type.RANKING:
                for index, _ in enumerate(question.choices):
                    self.fields[rank_field_name(question, index)] = forms.IntegerField(
                        required=False,
                        min_value=1,
                        max_value=len(question.choices),
                        widget=forms.NumberInput(attrs={"class": "rank-input"}),
                    )
            else:
                self.fields[answer_field_name(question)] = _answer_field(question)

    @staticmethod
    def initial_for(question: Question, value: Any) -> dict[str, Any]:
        """Form initial values that show ``value`` as the answer to ``question``."""
        if value is None:
            return {}
        if question.type == Question.Type.RANKING:
            order = value if isinstance(value, list) else [value]
            return {
                rank_field_name(question, index): order.index(option) + 1
                for index, option in enumerate(question.choices)
                if option in order
            }
        if question.type == Question.Type.STRUCTURED and not isinstance(value, str):
            value = json.dumps(value, indent=2, ensure_ascii=False)
        if question.type == Question.Type.MULTI_CHOICE and not isinstance(value, list):
            value = [value]
        return {answer_field_name(question): value}

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        for question in self.questions:
            if question.type != Question.Type.RANKING:
                continue
            ranks = [
                cleaned.get(rank_field_name(question, index))
                for index in range(len(question.choices))
            ]
            given = [rank for rank in ranks if rank is not None]
            if len(set(given)) != len(given):
                self.add_error(rank_field_name(question, 0), "Give each option a different rank.")
        return cleaned

    def answers(self) -> dict[str, Any]:
        """The cleaned answers by question key, typed as the question's type says."""
        answers: dict[str, Any] = {}
        for question in self.questions:
            if question.type == Question.Type.RANKING:
                ranked = [
                    (self.cleaned_data.get(rank_field_name(question, index)), option)
                    for index, option in enumerate(question.choices)
                ]
                order = [option for rank, option in sorted(r for r in ranked if r[0] is not None)]
                if order:
                    answers[question.key] = order
                continue
            value = self.cleaned_data.get(answer_field_name(question))
            if value in (None, "", []):
                continue
            answers[question.key] = value
        return answers


def _answer_field(question: Question) -> forms.Field:
    label = question.text
    choices = [(option, option) for option in question.choices]
    if question.type in Question.SINGLE_OPTION_TYPES:
        return forms.ChoiceField(
            label=label, choices=choices, required=False, widget=forms.RadioSelect
        )
    if question.type == Question.Type.MULTI_CHOICE:
        return forms.MultipleChoiceField(
            label=label, choices=choices, required=False, widget=forms.CheckboxSelectMultiple
        )
    if question.type == Question.Type.NUMBER:
        return NumberField(label=label, required=False)
    if question.type == Question.Type.STRUCTURED:
        return StructuredField(
            label=label, required=False, widget=forms.Textarea(attrs={"rows": 6, "class": "mono"})
        )
    return forms.CharField(label=label, required=False, widget=forms.Textarea(attrs={"rows": 2}))


class NumberField(forms.FloatField):
    widget = forms.NumberInput(attrs={"step": "any"})

    def to_python(self, value: Any) -> Any:
        number = super().to_python(value)
        if number is not None and float(number).is_integer():
            return int(number)
        return number


class StructuredField(forms.CharField):
    """JSON typed by the reviewer; text that is not JSON is kept as text."""

    def to_python(self, value: Any) -> Any:
        text = super().to_python(value)
        if not text:
            return text
        try:
            return json.loads(text)
        except ValueError:
            return text

    def prepare_value(self, value: Any) -> Any:
        if isinstance(value, dict | list):
            return json.dumps(value, indent=2, ensure_ascii=False)
        return value


class QueueCreateForm(forms.Form):
    batches = forms.ModelMultipleChoiceField(
        queryset=Batch.objects.none(), widget=forms.CheckboxSelectMultiple
    )
    schema = forms.ModelChoiceField(queryset=ConquestSchema.objects.none())
    name = forms.CharField(
        required=False,
        max_length=200,
        widget=forms.TextInput(attrs={"placeholder": "Default: the schema and the models"}),
    )
    required_submissions = forms.IntegerField(min_value=1, max_value=20, initial=1)

    def __init__(self, data: Any = None, *, batches: QuerySet[Batch], **kwargs: Any) -> None:
        super().__init__(data, **kwargs)
        # self.fields holds plain Fields to the type checker; these are the ModelChoiceFields above.
        batches_field = cast("forms.ModelMultipleChoiceField[Batch]", self.fields["batches"])
        batches_field.queryset = batches
        schema_field = cast("forms.ModelChoiceField[ConquestSchema]", self.fields["schema"])
        schema_field.queryset = ConquestSchema.objects.order_by("key", "-id")


class SchemaImportForm(forms.Form):
    file = forms.FileField(help_text="A conquest schema as JSON.")


class QueueAdminForm(forms.ModelForm[Queue]):
    """The admin's queue form, with the batches to import when the queue is added."""

    source_batches = forms.ModelMultipleChoiceField(
        queryset=Batch.objects.filter(status=Batch.Status.COMPLETED),
        required=False,
        help_text="Completed batches to import (several models on the same inputs are compared).",
    )

    class Meta:
        model = Queue
        fields = ("name", "description", "schema", "required_submissions", "reviewers")
