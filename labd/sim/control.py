"""The sim's control API: faults, outcome rules, statistics and objects over HTTP.

Tests in the same process use the Python objects directly; a sim started as
a separate process (``labd sim``, ``labd dev``) is steered through these
endpoints instead, under ``/sim/v1`` so they cannot collide with Kubernetes
paths. They take the same bearer token as the API.

- ``GET|PUT|DELETE /sim/v1/faults``: read, replace, clear the `FaultSpec`.
- ``GET|PUT|POST|DELETE /sim/v1/rules``: read, replace (``{"default":
  ..., "rules": [...]}``), append one rule, clear the outcome rules.
- ``GET|DELETE /sim/v1/stats``: read, reset the request counts.
- ``GET /sim/v1/objects/<resource>``: every stored object of a resource
  (plural name, e.g. ``pods``), across namespaces.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route

from labd.sim.apiserver import json_response
from labd.sim.errors import ApiError
from labd.sim.faults import Faults, FaultSpec, Stats
from labd.sim.kinds import RESOURCES
from labd.sim.outcomes import Outcome, OutcomeRule, Rules
from labd.sim.registry import Registry

__all__ = ["RuleSet", "control_routes"]

Handler = Callable[[Request], Awaitable[Response]]


class RuleSet(BaseModel):
    """The body of ``PUT /sim/v1/rules``."""

    default: str = "run"
    """Outcome of pods no annotation or rule decides."""
    rules: list[OutcomeRule] = []
    """The rules, first match wins."""


def _invalid(error: ValidationError | ValueError) -> ApiError:
    return ApiError(422, f"invalid control request: {error}", reason="Invalid")


async def _json(request: Request) -> Any:
    try:
        return json.loads(await request.body() or b"{}")
    except ValueError as error:
        raise ApiError(400, f"the body is not valid JSON: {error}") from None


def control_routes(
    *,
    faults: Faults,
    rules: Rules,
    stats: Stats,
    registry: Registry,
    authorize: Callable[[Request], None],
) -> Mount:
    """Build the ``/sim/v1`` routes.

    Parameters
    ----------
    faults
        The faults to steer.
    rules
        The kubelet's outcome rules.
    stats
        The request counters.
    registry
        The object store, for ``/objects``.
    authorize
        Checks a request's credentials; raises `ApiError`.

    Returns
    -------
    starlette.routing.Mount
        The mounted control API.
    """

    def guarded(handler: Handler) -> Handler:
        async def run(request: Request) -> Response:
            try:
                authorize(request)
                return await handler(request)
            except ApiError as error:
                return json_response(error.status(), error.code)

        return run

    def rule_set() -> dict[str, Any]:
        return {
            "default": str(rules.default),
            "rules": [r.model_dump() for r in rules.rules],
        }

    async def get_faults(request: Request) -> Response:
        return json_response(faults.spec.model_dump())

    async def put_faults(request: Request) -> Response:
        try:
            faults.set(FaultSpec.model_validate(await _json(request)))
        except ValidationError as error:
            raise _invalid(error) from None
        return json_response(faults.spec.model_dump())

    async def clear_faults(request: Request) -> Response:
        faults.clear()
        return json_response(faults.spec.model_dump())

    async def get_rules(request: Request) -> Response:
        return json_response(rule_set())

    async def put_rules(request: Request) -> Response:
        try:
            wanted = RuleSet.model_validate(await _json(request))
            default = Outcome.parse(wanted.default)
        except (ValidationError, ValueError) as error:
            raise _invalid(error) from None
        rules.default = default
        rules.set(wanted.rules)
        return json_response(rule_set())

    async def add_rule(request: Request) -> Response:
        try:
            rules.rules.append(OutcomeRule.model_validate(await _json(request)))
        except ValidationError as error:
            raise _invalid(error) from None
        return json_response(rule_set(), 201)

    async def clear_rules(request: Request) -> Response:
        rules.clear()
        return json_response(rule_set())

    async def get_stats(request: Request) -> Response:
        return json_response(stats.snapshot())

    async def reset_stats(request: Request) -> Response:
        stats.reset()
        return json_response(stats.snapshot())

    by_plural = {r.plural: r for r in RESOURCES}

    async def get_objects(request: Request) -> Response:
        resource = by_plural.get(request.path_params["resource"])
        if resource is None:
            raise ApiError(404, f"unknown resource {request.path_params['resource']!r}")
        return json_response({"items": registry.objects(resource)})

    return Mount(
        "/sim/v1",
        routes=[
            Route("/faults", guarded(get_faults), methods=["GET"]),
            Route("/faults", guarded(put_faults), methods=["PUT"]),
            Route("/faults", guarded(clear_faults), methods=["DELETE"]),
            Route("/rules", guarded(get_rules), methods=["GET"]),
            Route("/rules", guarded(put_rules), methods=["PUT"]),
            Route("/rules", guarded(add_rule), methods=["POST"]),
            Route("/rules", guarded(clear_rules), methods=["DELETE"]),
            Route("/stats", guarded(get_stats), methods=["GET"]),
            Route("/stats", guarded(reset_stats), methods=["DELETE"]),
            Route("/objects/{resource}", guarded(get_objects), methods=["GET"]),
        ],
    )
