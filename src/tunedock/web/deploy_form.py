"""The deploy form: one field per deployment parameter, read from the parameter models.

Labels, allowed ranges and choices come from the pydantic models in
``tunedock.deployments.parameters``, so a new parameter appears in the form without a
change here (with a label made from its name until it gets one below).
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import annotated_types
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from tunedock.api.schemas import DeploymentCreate
from tunedock.deployments import parameters as parameter_models
from tunedock.deployments.hardware import cuda_device_count
from tunedock.store.tables import Model

SECTIONS: tuple[tuple[str, str, type[BaseModel]], ...] = (
    ("generation", "Generation defaults", parameter_models.GenerationDefaults),
    ("scaling", "Scaling", parameter_models.Scaling),
    ("hardware", "Hardware", parameter_models.Hardware),
    ("optimization", "Optimization", parameter_models.Optimization),
)

LABELS = {
    "temperature": "Temperature", "max_tokens": "Max tokens", "top_p": "Top p", "top_k": "Top k",
    "stop": "Stop sequences", "max_batch_size": "Max batch size", "min_replicas": "Min replicas",
    "max_replicas": "Max replicas", "scale_up_delay": "Scale-up delay (s)",
    "scale_down_delay": "Scale-down delay (s)", "idle_undeploy_after": "Idle time before un-deploy (s)",
    "device": "Device", "threads": "CPU threads", "engine": "Engine", "quantization": "Quantization",
}
# Meaning of an empty optional field, shown next to the field.
BLANK_MEANS = {"top_k": "off", "idle_undeploy_after": "never", "threads": "automatic"}


@dataclass
class FormField:
    """One input of the deploy form; ``name`` is the dotted parameter name, e.g. generation.top_p."""

    name: str
    label: str
    kind: str  # number, integer, select, lines
    value: str
    help: str = ""
    range_text: str = ""
    minimum: float | None = None
    maximum: float | None = None
    optional: bool = False
    options: list[tuple[str, str, bool]] = field(default_factory=list)  # value, label, enabled
    error: str | None = None

    @property
    def element_id(self) -> str:
        return "field-" + self.name.replace(".", "-").replace("_", "-")


@dataclass
class FormSection:
    key: str
    title: str
    fields: list[FormField]
    error: str | None = None


@dataclass
class DeployForm:
    sections: list[FormSection]
    description: str = ""
    errors: list[str] = field(default_factory=list)  # problems that belong to no single field

    def field(self, name: str) -> FormField | None:
        return next((item for section in self.sections for item in section.fields if item.name == name), None)

    def add_error(self, name: str, message: str) -> None:
        target = self.field(name)
        if target is not None:
            target.error = message
            return
        section = next((item for item in self.sections if item.key == name), None)
        if section is not None:
            section.error = message
        else:
            self.errors.append(f"{name}: {message}" if name else message)

    @property
    def has_errors(self) -> bool:
        return bool(self.errors) or any(
            section.error or any(item.error for item in section.fields) for section in self.sections)


def build_form(model: Model, current: Mapping[str, Any] | None, description: str = "") -> DeployForm:
    """Build the form pre-filled with ``current`` parameters, or with the defaults fitted to the model."""
    sections = []
    for key, title, section_model in SECTIONS:
        values = dict((current or {}).get(key, {}))
        fields = [_form_field(key, name, info, values, model) for name, info in section_model.model_fields.items()]
        sections.append(FormSection(key=key, title=title, fields=fields))
    return DeployForm(sections=sections, description=description)


def _form_field(section: str, name: str, info: FieldInfo, values: Mapping[str, Any], model: Model) -> FormField:
    default = _default(info)
    if section == "generation" and name == "max_tokens" and model.context_length and name not in values:
        default = min(default, model.context_length)
    value = values.get(name, default)
    kind, options = _kind(name, info)
    limits = _limits(info)
    form_field = FormField(
        name=f"{section}.{name}", label=LABELS.get(name, name.replace("_", " ").capitalize()), kind=kind,
        value=_as_text(value), help=_help_text(info.description), options=options,
        optional=_is_optional(info.annotation), minimum=limits.get("min"), maximum=limits.get("max"),
    )
    form_field.range_text = _range_text(form_field, limits, name)
    if section == "generation" and name == "max_tokens" and model.context_length:
        form_field.maximum = model.context_length
        form_field.range_text = f"1 to {model.context_length} (the model's context length)"
    return form_field


def _help_text(description: str | None) -> str:
    """Adapt an API field description to the form: no Markdown quotes, no JSON null (blank is shown instead)."""
    clauses = (description or "").replace("`", "").split("; ")
    text = "; ".join(clause for clause in clauses if "null" not in clause).strip()
    return text if not text or text.endswith(".") else text + "."


def _default(info: FieldInfo) -> Any:
    if info.default_factory is not None:
        return info.default_factory()  # type: ignore[call-arg]
    return info.default


def _kind(name: str, info: FieldInfo) -> tuple[str, list[tuple[str, str, bool]]]:
    annotation = info.annotation
    if typing.get_origin(annotation) is typing.Literal:
        return "select", [_option(name, choice) for choice in typing.get_args(annotation)]
    if name == "device":
        devices = ["cpu", *(f"cuda:{index}" for index in range(cuda_device_count()))]
        return "select", [(device, device, True) for device in devices]
    base = _without_none(annotation)
    if typing.get_origin(base) is list:
        return "lines", []
    if base is int:
        return "integer", []
    if base is float:
        return "number", []
    return "text", []


def _option(name: str, choice: str) -> tuple[str, str, bool]:
    if name == "engine" and choice not in parameter_models.AVAILABLE_ENGINES:
        return choice, f"{choice} (not available in this build)", False
    return choice, choice, True


def _without_none(annotation: Any) -> Any:
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        remaining = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        return remaining[0] if len(remaining) == 1 else annotation
    return annotation


def _is_optional(annotation: Any) -> bool:
    return type(None) in typing.get_args(annotation)


def _limits(info: FieldInfo) -> dict[str, Any]:
    limits: dict[str, Any] = {}
    for rule in info.metadata:
        if isinstance(rule, annotated_types.Ge):
            limits["min"] = rule.ge
        elif isinstance(rule, annotated_types.Gt):
            limits["min"], limits["min_exclusive"] = rule.gt, True
        elif isinstance(rule, annotated_types.Le):
            limits["max"] = rule.le
        elif isinstance(rule, annotated_types.Lt):
            limits["max"], limits["max_exclusive"] = rule.lt, True
        elif isinstance(rule, annotated_types.MaxLen):
            limits["max_items"] = rule.max_length
    return limits


def _range_text(form_field: FormField, limits: Mapping[str, Any], name: str) -> str:
    low, high = limits.get("min"), limits.get("max")
    parts = []
    if low is not None and high is not None and limits.get("min_exclusive"):
        parts.append(f"more than {low} and at most {high}")
    elif low is not None and high is not None:
        parts.append(f"{low} to {high}")
    elif low is not None:
        parts.append(f"more than {low}" if limits.get("min_exclusive") else f"at least {low}")
    elif high is not None:
        parts.append(f"at most {high}")
    if "max_items" in limits:
        parts.append(f"one per line, at most {limits['max_items']}")
    if form_field.optional:
        parts.append(f"blank: {BLANK_MEANS.get(name, 'not set')}")
    return "; ".join(parts)


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return "\n".join(str(item) for item in value)
    return str(value)


def read_form(form: DeployForm, submitted: Mapping[str, str]) -> DeploymentCreate | None:
    """Fill the form with the submitted values; return the request, or None with errors marked."""
    body: dict[str, Any] = {"description": submitted.get("description", "").strip()}
    form.description = body["description"]
    for section in form.sections:
        values: dict[str, Any] = {}
        for item in section.fields:
            raw = submitted.get(item.name, "")
            item.value = raw
            parsed = _parse(item, raw)
            if parsed is not _MISSING:
                values[item.name.split(".", 1)[1]] = parsed
        body[section.key] = values
    if form.has_errors:
        return None
    try:
        return DeploymentCreate.model_validate(body)
    except ValidationError as exc:
        for problem in exc.errors():
            location = ".".join(str(part) for part in problem["loc"] if not isinstance(part, int))
            form.add_error(location, problem["msg"].removeprefix("Value error, "))
        return None


_MISSING = object()


def _parse(item: FormField, raw: str) -> Any:
    if item.kind == "lines":
        return [line.rstrip("\r") for line in raw.split("\n") if line.strip()]
    text = raw.strip()
    if text == "":
        if item.optional:
            return None
        item.error = "Enter a value."
        return _MISSING
    return text


def add_parameter_errors(form: DeployForm, fields: list[Mapping[str, Any]]) -> None:
    """Mark the problems of an InvalidParameters error (``details["fields"]``) on their fields."""
    for problem in fields:
        message = str(problem.get("message", "is invalid"))
        # Engine and machine checks word their messages to follow the value ("... is not supported").
        if message[:1].islower():
            message = f"{problem.get('value')} {message}"
        form.add_error(str(problem.get("field", "")), message)
