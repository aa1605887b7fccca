"""Every refusal as JSON: a field's problems under the field's name (``{"name": ["..."]}``),
anything else under ``detail``. A service's ``ValidationError`` (keyed by field, as the
portal's forms show it) becomes a 400 here, so views need not translate it."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.http import JsonResponse
from django.views import defaults
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler


class Conflict(exceptions.APIException):
    """The request is well formed, but the resource's state refuses it (409)."""

    status_code = status.HTTP_409_CONFLICT
    default_detail = "The request conflicts with the resource's state."
    default_code = "conflict"


def field_errors(exc: ValidationError) -> dict[str, list[str]]:
    if not hasattr(exc, "error_dict"):
        return {"detail": exc.messages}
    errors = dict(exc.message_dict)
    if "__all__" in errors:
        errors["detail"] = errors.pop("__all__")
    return errors


def exception_handler(exc, context):
    if isinstance(exc, ValidationError):
        return Response(field_errors(exc), status=status.HTTP_400_BAD_REQUEST)
    return drf_exception_handler(exc, context)


def not_found(request, exception):
    """The URL root's 404: JSON under /api/v1/ (an endpoint that does not exist), the
    portal's page elsewhere."""
    if request.path_info.startswith("/api/v1/"):
        return JsonResponse(
            {"detail": "No such endpoint; the list is at /api/v1/docs/."}, status=404
        )
    return defaults.page_not_found(request, exception)
