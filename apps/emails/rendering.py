"""Templates under templates/emails/, rendered to subject, text and HTML, and the checks
every address and header passes before a row exists (a 400, never a half-made row)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.template import TemplateDoesNotExist, loader

from apps.core.errors import ErrorCode, SurgeError

from .models import ADDRESS_MAX_LENGTH

__all__ = ["Rendered", "address_check", "header_check", "render"]

# A template's name is one path segment: nothing that climbs out of templates/emails/.
TEMPLATE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
# `generic` renders the caller's subject and body: it has nothing to say without them.
REQUIRED_CONTEXT = {"generic": ("subject", "body")}
# RFC 5322 2.1.1: a header line is at most 998 characters.
SUBJECT_MAX_LENGTH = 998


@dataclass(frozen=True, slots=True)
class Rendered:
    subject: str
    text: str
    html: str


def _invalid(field: str, message: str) -> SurgeError:
    return SurgeError(ErrorCode.INVALID, "Invalid input.", fields={field: [message]})


def address_check(address: Any, *, field: str = "to") -> str:
    """The address, stripped, or a 400 naming `field`. CR/LF are refused before the
    validator sees them: in a header they would start a new header (injection)."""
    if not isinstance(address, str) or not address.strip():
        raise _invalid(field, "An email address is required.")
    address = address.strip()
    if "\r" in address or "\n" in address or len(address) > ADDRESS_MAX_LENGTH:
        raise _invalid(field, "Enter a valid email address.")
    try:
        validate_email(address)
    except ValidationError:
        raise _invalid(field, "Enter a valid email address.") from None
    return address


def header_check(value: str, *, field: str) -> str:
    if "\r" in value or "\n" in value or "\x00" in value:
        raise _invalid(field, "Must be one line (no CR, LF or NUL).")
    return value


def render(*, template: Any, context: Any) -> Rendered:
    """Subject, text and HTML of `template` with `context`, or a 400 naming the field.

    `<name>.txt` and `<name>.html` are the bodies; the subject is `<name>.subject.txt`,
    or for `generic` the context's own `subject`. Any error while rendering (a broken
    template, a filter that raises on the given values) is the caller's 400: the mail is
    never queued half-made.
    """
    if not isinstance(template, str) or not TEMPLATE_NAME.match(template):
        raise _invalid("template", "Unknown template.")
    if context is None:
        context = {}
    if not isinstance(context, dict):
        raise _invalid("context", "Must be an object.")
    missing = [key for key in REQUIRED_CONTEXT.get(template, ()) if key not in context]
    if missing:
        raise _invalid("context", f"Missing: {', '.join(missing)}.")
    try:
        text_template = loader.get_template(f"emails/{template}.txt")
    except TemplateDoesNotExist:
        raise _invalid("template", "Unknown template.") from None
    # A syntax error surfaces on loading: one of the failures below.
    except Exception as exc:  # noqa: BLE001
        raise _invalid("template", f"The template failed to render: {exc}") from None
    try:
        text = text_template.render(context).strip() + "\n"
        html = _render_optional(f"emails/{template}.html", context)
        if template == "generic":
            subject = str(context["subject"])
        else:
            subject = loader.get_template(f"emails/{template}.subject.txt").render(context)
    # Any template error or raising filter is the caller's input, not a server error.
    except Exception as exc:  # noqa: BLE001
        raise _invalid("template", f"The template failed to render: {exc}") from None
    subject = subject.strip()
    if not subject:
        raise _invalid("subject", "The subject is empty.")
    if len(subject) > SUBJECT_MAX_LENGTH:
        raise _invalid("subject", f"At most {SUBJECT_MAX_LENGTH} characters.")
    header_check(subject, field="subject")
    return Rendered(subject=subject, text=text, html=html)


def _render_optional(name: str, context: dict[str, Any]) -> str:
    try:
        found = loader.get_template(name)
    except TemplateDoesNotExist:
        return ""
    return found.render(context)
