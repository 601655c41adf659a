"""The one error shape of llmserver, OpenAI's: ``{"error": {message, type, param, code}}``.

Every failure path builds its body here: views raise :class:`APIError`, DRF's exception
handler converts its own exceptions, Django's 400/403/404/500 handlers and the
middleware use :func:`error_response`. Nothing answers with an HTML page or a traceback.
"""

from __future__ import annotations

import logging

from django.core.exceptions import RequestDataTooBig
from django.http import Http404, JsonResponse
from rest_framework import exceptions as drf_exceptions

log = logging.getLogger("llmserver.errors")

# The ``type`` OpenAI sends for each status.
_TYPE_FOR_STATUS = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
}


class APIError(Exception):
    """A failure a client should see, with its HTTP status and OpenAI fields."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        type: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.type = type or _TYPE_FOR_STATUS.get(status, "invalid_request_error")
        self.headers = headers or {}

    def body(self) -> dict:
        return error_body(self.message, type=self.type, param=self.param, code=self.code)

    def response(self) -> JsonResponse:
        response = JsonResponse(self.body(), status=self.status)
        for name, value in self.headers.items():
            response[name] = value
        return response


def error_body(message: str, *, type: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_response(status: int, message: str, **fields) -> JsonResponse:
    return APIError(status, message, **fields).response()


def model_not_found(model: str) -> APIError:
    return APIError(
        404,
        f"The model '{model}' does not exist or you do not have access to it.",
        code="model_not_found",
        param="model",
    )


# --- DRF ------------------------------------------------------------------------------

# DRF's field error codes, in OpenAI's vocabulary.
_FIELD_CODES = {
    "required": "missing_required_parameter",
    "null": "invalid_type",
    "invalid": "invalid_type",
    "not_a_list": "invalid_type",
    "not_a_dict": "invalid_type",
    # Codes the protocol's own checks give, already in OpenAI's vocabulary.
    "invalid_type": "invalid_type",
    "unknown_parameter": "unknown_parameter",
    "unsupported_parameter": "unsupported_parameter",
}


def _first_field_error(detail, path: str = "") -> tuple[str, drf_exceptions.ErrorDetail] | None:
    """Walk DRF's nested error detail to the first message, building OpenAI's param path
    (``messages[0].content``)."""
    if isinstance(detail, dict):
        for key, value in detail.items():
            if key == "non_field_errors":
                key_path = path
            elif isinstance(key, int) or (isinstance(key, str) and key.isdigit()):
                key_path = f"{path}[{key}]"
            else:
                key_path = f"{path}.{key}" if path else str(key)
            found = _first_field_error(value, key_path)
            if found:
                return found
        return None
    if isinstance(detail, list):
        for index, value in enumerate(detail):
            if isinstance(value, (dict, list)) and value:
                # A list of per-item errors (ListSerializer / ListField children).
                found = _first_field_error(value, f"{path}[{index}]")
                if found:
                    return found
            elif isinstance(value, drf_exceptions.ErrorDetail):
                return path, value
        return None
    if isinstance(detail, drf_exceptions.ErrorDetail):
        return path, detail
    return None


def validation_error(exc: drf_exceptions.ValidationError) -> APIError:
    found = _first_field_error(exc.detail)
    if not found:
        return APIError(400, "Invalid request.", code="invalid_value")
    param, detail = found
    code = _FIELD_CODES.get(detail.code, "invalid_value")
    if code == "missing_required_parameter":
        message = f"Missing required parameter: '{param}'."
    elif param:
        message = f"Invalid value for '{param}': {detail}"
    else:
        message = str(detail)
    return APIError(400, message, code=code, param=param or None)


def drf_exception_handler(exc, context) -> JsonResponse:
    """DRF's EXCEPTION_HANDLER: every exception a view raises leaves in OpenAI's shape."""
    return as_api_error(exc, context.get("view") if context else None).response()


def as_api_error(exc: Exception, where=None) -> APIError:
    """The APIError a client is answered with for ``exc``: itself, or DRF's and Django's
    exceptions in OpenAI's shape; anything else is a 500 (logged, naming ``where``)."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, drf_exceptions.ValidationError):
        return validation_error(exc)
    if isinstance(exc, drf_exceptions.ParseError):
        return APIError(400, f"We could not parse the JSON body of your request: {exc.detail}", code="invalid_json")
    if isinstance(exc, drf_exceptions.UnsupportedMediaType):
        return APIError(415, "Unsupported Content-Type; send the request body as application/json.",
                        code="unsupported_media_type")
    if isinstance(exc, drf_exceptions.MethodNotAllowed):
        return APIError(405, str(exc.detail), code="method_not_allowed")
    if isinstance(exc, drf_exceptions.NotFound):
        return APIError(404, str(exc.detail), code="not_found")
    if isinstance(exc, Http404):
        return APIError(404, str(exc) or "Not found.", code="not_found")
    if isinstance(exc, RequestDataTooBig):
        return _too_large()
    if isinstance(exc, drf_exceptions.APIException):
        return APIError(exc.status_code, str(exc.detail), code=exc.default_code)
    log.error("Unhandled error in %s", where.__class__.__name__ if where is not None else "a request",
              exc_info=exc)
    return APIError(500, "The server had an error while processing your request.", code="internal_error")


def _too_large() -> APIError:
    from django.conf import settings

    return APIError(413, f"Request body too large: the limit is {settings.MAX_REQUEST_SIZE_MB:g} MB.",
                    code="request_too_large")


def request_too_large() -> JsonResponse:
    return _too_large().response()


# --- Django's handlers (urls.handler400/403/404/500) -----------------------------------


def handler400(request, exception=None):
    if isinstance(exception, RequestDataTooBig):
        return request_too_large()
    return error_response(400, "Bad request.", code="bad_request")


def handler403(request, exception=None):
    return error_response(403, "Forbidden.", code="forbidden")


def handler404(request, exception=None):
    return error_response(404, f"Unknown path: {request.path}", code="not_found")


def handler500(request):
    return error_response(500, "The server had an error while processing your request.", code="internal_error")


# Seconds a client is asked to wait after a shutdown refusal: about a restart's time.
SHUTDOWN_RETRY_AFTER_SECONDS = 5


def shutting_down(message: str = "The server is shutting down and takes no new requests; retry shortly.") -> APIError:
    """503 for work this server will not do because it is stopping (llmserver.shutdown);
    another server (or this one, restarted) will."""
    return APIError(503, message, code="server_shutting_down", type="server_error",
                    headers={"Retry-After": str(SHUTDOWN_RETRY_AFTER_SECONDS)})
