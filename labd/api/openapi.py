"""The OpenAPI 3.1 document, built from the route table and the models.

Schemas come from the pydantic models themselves (``model_json_schema``),
routes from `labd.api.routes.OPERATIONS`: nothing is written twice.
"""

from __future__ import annotations

from typing import Any, Final

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from labd import __version__
from labd.api.auth import Access
from labd.api.models import ErrorBody
from labd.api.routes import OPERATIONS, Operation, Reply

__all__ = ["openapi_document"]

_REF: Final = "#/components/schemas/{model}"
_ERRORS: Final = {
    400: "Unknown image (`unknown_image`).",
    401: "Missing or unknown bearer token (`invalid_token`).",
    403: "Token may not act for this user, or the user may not spawn "
    "(`permission_denied`, `insufficient_quota`).",
    404: "No lab for this user (`unknown_user`).",
    409: "A lab exists or a delete is in progress (`lab_exists`, `operation_in_progress`).",
    413: "Request body too large (`request_too_large`).",
    429: "Too many open event streams for the user, or in all (`too_many_streams`).",
    422: "Invalid username, body or query (`invalid_username`, `invalid_lab_size`, "
    "`invalid_docker_reference`, `value_error`, ...).",
    500: "Internal error, or a delete that could not finish (`internal_error`, `delete_failed`).",
    503: "Not ready (`not_ready`).",
}


def _models() -> list[tuple[type[BaseModel], JsonSchemaMode]]:
    models: list[tuple[type[BaseModel], JsonSchemaMode]] = [(ErrorBody, "serialization")]
    for operation in OPERATIONS:
        if operation.body is not None:
            models.append((operation.body, "validation"))
        models.extend(
            (reply.model, "serialization")
            for reply in operation.replies.values()
            if reply.model is not None
        )
    return list(dict.fromkeys(models))


def _ref(model: type[BaseModel]) -> dict[str, Any]:
    return {"$ref": _REF.format(model=model.__name__)}


def _reply(reply: Reply) -> dict[str, Any]:
    result: dict[str, Any] = {"description": reply.description}
    if reply.headers:
        result["headers"] = {
            name: {"required": True, "schema": {"type": "string"}} for name in reply.headers
        }
    if reply.media_type is None:
        return result
    schema = reply.schema
    if reply.model is not None:
        schema = (
            {"type": "array", "items": _ref(reply.model)} if reply.array else _ref(reply.model)
        )
    result["content"] = {reply.media_type: {"schema": schema or {}}}
    return result


def _error(status: int) -> dict[str, Any]:
    result: dict[str, Any] = {
        "description": _ERRORS[status],
        "content": {"application/json": {"schema": _ref(ErrorBody)}},
    }
    if status == 401:
        result["headers"] = {"WWW-Authenticate": {"required": True, "schema": {"type": "string"}}}
    return result


def _parameters(operation: Operation) -> list[dict[str, Any]]:
    parameters: list[dict[str, Any]] = []
    if operation.has_username:
        parameters.append(
            {
                "name": "username",
                "in": "path",
                "required": True,
                "description": "JupyterHub username: 1 to 255 letters, digits or `-._@+`.",
                "schema": {"type": "string", "minLength": 1, "maxLength": 255},
            }
        )
    if operation.query is not None:
        schema = operation.query.model_json_schema()
        required = set(schema.get("required", []))
        for name, field_schema in schema["properties"].items():
            parameters.append(
                {
                    "name": name,
                    "in": "query",
                    "required": name in required,
                    "description": field_schema.get("description", ""),
                    "schema": {
                        k: v for k, v in field_schema.items() if k not in ("description", "title")
                    },
                }
            )
    parameters.extend(
        {"name": name, "in": "header", "required": False, "description": text}
        | {"schema": {"type": "string"}}
        for name, text in operation.request_headers.items()
    )
    return parameters


def _operation(operation: Operation) -> dict[str, Any]:
    result: dict[str, Any] = {
        "operationId": operation.name,
        "summary": operation.summary,
        "security": [] if operation.access is Access.PUBLIC else [{"bearer": []}],
        "responses": {
            **{str(status): _reply(reply) for status, reply in operation.replies.items()},
            **{str(status): _error(status) for status in operation.error_statuses},
        },
    }
    parameters = _parameters(operation)
    if parameters:
        result["parameters"] = parameters
    if operation.body is not None:
        result["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _ref(operation.body)}},
        }
    return result


def openapi_document(*, prefix: str) -> dict[str, Any]:
    """Return the OpenAPI 3.1 document of every route under ``prefix``."""
    _, definitions = models_json_schema(_models(), ref_template=_REF)
    paths: dict[str, dict[str, Any]] = {}
    for operation in OPERATIONS:
        paths.setdefault(prefix + operation.path, {})[operation.method.lower()] = _operation(
            operation
        )
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "labd",
            "version": __version__,
            "description": "The JupyterHub lab-controller API (Nublado spawner protocol, v1).",
        },
        "paths": paths,
        "components": {
            "schemas": definitions["$defs"],
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
