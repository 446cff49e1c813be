"""The Kubernetes API client labd uses, and how each call is made.

Every Kubernetes request labd sends goes through `KubeApi.call`, so every
request gets the same treatment:

- a timeout (``kubernetes.request_timeout``): an API server that stops
  answering must not wedge a scheduler step forever;
- retries with capped exponential backoff and full jitter on 429, 5xx and
  connection errors.  kubernetes-asyncio has a ``Configuration.retries``
  setting but never reads it, so the backoff is ours.  Retrying a create is
  safe because labd's creates are idempotent one level up: a create that
  reached etcd before its answer was lost comes back as 409 and is checked
  for ownership (see `labd.kube.storage`);
- one error type, `KubeError`, whose text names the call (``create Pod
  labd-alice/alice-nb: 500 InternalError: etcd unavailable``), because the
  scheduler shows that text to the user in the lab's ``error`` event;
- a count of calls and failures by verb and kind through an optional hook,
  for ``/metrics``.

Responses are read raw (``_preload_content=False``) and parsed as JSON into
plain dicts: labd only needs a few fields of each object, and building the
generated model classes costs far more than parsing.  Measured with
``tests/kube/bench_list.py`` (10,000 Running lab pods, simulated cluster,
one page): about 0.7 s as JSON against about 7 s as ``V1Pod`` models.  A
raw response is not checked for errors by kubernetes-asyncio, so `KubeApi`
checks the status itself.  `KubeApi.stream` hands a success's body over as
it arrives instead, for callers that parse it piece by piece (the paged
LISTs of `labd.kube.listing`), so that a large body is never held whole.

The `ApiClient` is always built from an explicit `Configuration`: the
loaders would otherwise overwrite the process-wide default configuration,
which other code (the sim's kubelet in ``labd dev``) may rely on.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import aiohttp
import structlog
from aiohttp.helpers import get_env_proxy_for_url
from kubernetes_asyncio.client import ApiClient, Configuration
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.config import load_incluster_config, load_kube_config
from yarl import URL

from labd.config import KubernetesConfig

__all__ = [
    "USER_AGENT",
    "WATCH_CONNECTIONS",
    "BodyConsumer",
    "CallHook",
    "KubeApi",
    "KubeError",
    "Reply",
    "RetryPolicy",
    "UnreadableBodyError",
    "collector_paused",
    "create_api_client",
]

USER_AGENT: Final = "labd"
"""User-Agent of labd's requests (the API server's audit log shows it)."""

WATCH_CONNECTIONS: Final = 3
"""Long-lived watch connections labd holds: the pod, namespace and Event watches."""

_SPARE_CONNECTIONS: Final = 4
"""Connections beyond operations and watches: the reconciler's LISTs."""

_RETRYABLE_STATUSES: Final = frozenset({429, 500, 502, 503, 504})

_CHUNK_SIZE: Final = 64 * 1024
"""Bytes of a streamed body handed over at most at a time (see `KubeApi.stream`)."""

_LOG = structlog.get_logger()

_T = TypeVar("_T")

BodyConsumer = Callable[[AsyncIterator[bytes]], Awaitable[_T]]
"""Reads a successful answer's body from its chunks, as they arrive (see `KubeApi.stream`)."""

CallHook = Callable[[str, str, bool], None]
"""Called after every request attempt with ``(verb, kind, error)``.

``error`` is true when the attempt failed (a connection error, a timeout or
an HTTP status the caller did not accept); a hook must not raise.
"""


class UnreadableBodyError(Exception):
    """A `BodyConsumer` cannot make sense of a successful answer's body.

    `KubeApi.stream` turns it into a `KubeError` with the answer's status
    and this exception's text as message, and does not retry the call.
    """


class KubeError(Exception):
    """A Kubernetes API call failed.

    Parameters
    ----------
    verb
        What was asked: ``create``, ``get``, ``list``, ``delete``, ``watch``.
    kind
        Kind of object, such as ``Pod``.
    namespace
        Namespace of the object, or `None` for cluster-wide objects and
        cross-namespace LISTs.
    name
        Name of the object, or `None` for a LIST.
    status
        HTTP status, or `None` when no answer came (connection error,
        timeout).
    reason
        The Kubernetes ``Status`` reason (``AlreadyExists``,
        ``InternalError``), or the HTTP reason phrase when the answer was
        not a ``Status``; `None` when no answer came.
    message
        What went wrong, in the API server's words when it gave some.
    retry_after
        Seconds the server asked the client to wait (``Retry-After``), if
        it did.
    """

    def __init__(
        self,
        *,
        verb: str,
        kind: str,
        namespace: str | None,
        name: str | None,
        status: int | None,
        reason: str | None,
        message: str,
        retry_after: float | None = None,
    ) -> None:
        self.verb = verb
        self.kind = kind
        self.namespace = namespace
        self.name = name
        self.status = status
        self.reason = reason
        self.message = message
        self.retry_after = retry_after
        super().__init__(verb, kind, namespace, name, status, reason, message)

    @property
    def target(self) -> str:
        """What the call addressed: ``ns/name``, ``name``, or ``(all namespaces)``."""
        if self.name is None:
            return self.namespace or "(all namespaces)"
        if self.namespace is None:
            return self.name
        return f"{self.namespace}/{self.name}"

    @property
    def retryable(self) -> bool:
        """Whether trying again later may succeed (429, 5xx, no answer)."""
        return self.status is None or self.status in _RETRYABLE_STATUSES

    def __str__(self) -> str:
        if self.status is None:
            cause = self.message
        elif self.reason:
            cause = f"{self.status} {self.reason}: {self.message}"
        else:
            cause = f"{self.status}: {self.message}"
        return f"{self.verb} {self.kind} {self.target}: {cause}"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently one call is retried.

    The delay before retry *n* (from 1) is drawn uniformly from
    ``[0, min(maximum, initial * 2 ** (n - 1))]`` ("full jitter"), so many
    callers failing at once do not retry in lockstep.  A ``Retry-After``
    header raises the delay, still capped at `maximum`.
    """

    attempts: int = 3
    """Tries in all, the first included; 1 disables retries."""

    initial: float = 0.5
    """Upper bound of the first delay, in seconds."""

    maximum: float = 1.5
    """Upper bound of any delay, in seconds."""

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be at least 1, not {self.attempts}")
        if self.initial < 0 or self.maximum < self.initial:
            raise ValueError("need 0 <= initial <= maximum")

    def delay(self, retry: int, *, retry_after: float | None = None) -> float:
        """Return the seconds to wait before retry number ``retry`` (from 1).

        Parameters
        ----------
        retry
            Which retry this is: 1 for the second attempt.
        retry_after
            Seconds the server asked to wait, if it did.

        Returns
        -------
        float
            A delay between 0 and `maximum`.
        """
        ceiling = min(self.maximum, self.initial * 2 ** (retry - 1))
        delay = random.uniform(0, ceiling)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.maximum))
        return delay


@dataclass(frozen=True, slots=True)
class Reply:
    """The answer to a call: its HTTP status and its JSON body."""

    status: int
    """HTTP status: a 2xx, or one of the statuses the caller accepted."""

    body: dict[str, Any]
    """The parsed body: the object, the list, or a ``Status``."""

    @property
    def ok(self) -> bool:
        """Whether the status is a success (2xx)."""
        return 200 <= self.status < 300


async def create_api_client(config: KubernetesConfig) -> ApiClient:
    """Create the API client for the configured cluster.

    Must be called inside the running event loop (the client's HTTP session
    belongs to it).  Close the client with ``await client.close()``.

    Parameters
    ----------
    config
        Where the cluster is (kubeconfig file and context, or the pod's
        service account) and how many operations run at once.

    Returns
    -------
    kubernetes_asyncio.client.ApiClient
        A client with its own `Configuration`, a connection pool sized for
        ``max_concurrent_operations`` plus the watches, and labd's
        User-Agent.

    Raises
    ------
    kubernetes_asyncio.config.ConfigException
        If the kubeconfig or the in-cluster environment is unusable.
    """
    configuration = Configuration()
    if config.in_cluster:
        load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    else:
        await load_kube_config(
            config_file=str(config.kubeconfig) if config.kubeconfig is not None else None,
            context=config.context,
            client_configuration=configuration,
            persist_config=False,
        )
    configuration.connection_pool_maxsize = (
        config.max_concurrent_operations + WATCH_CONNECTIONS + _SPARE_CONNECTIONS
    )
    client = ApiClient(configuration)
    client.user_agent = USER_AGENT
    _look_up_environment_once(client, configuration)
    return client


def _look_up_environment_once(client: ApiClient, configuration: Configuration) -> None:
    """Read the proxy from the environment once, not on every request.

    kubernetes-asyncio's HTTP session trusts the environment, so aiohttp
    looks up ``HTTPS_PROXY``/``NO_PROXY`` and ``~/.netrc`` for every request,
    each time on a worker thread: two thread round trips per call, a sixth
    of labd's CPU in a burst of spawns.  The cluster's address does not
    change, so labd takes the environment's proxy for it (if any, and if the
    kubeconfig named none) now, and the session stops looking.  A kube
    client never authenticates with ``~/.netrc``: its credentials are the
    kubeconfig's.
    """
    rest = client.rest_client
    if not rest.proxy and configuration.host:
        with contextlib.suppress(LookupError):
            proxy, auth = get_env_proxy_for_url(URL(configuration.host))
            rest.proxy = str(proxy)
            if auth is not None:
                rest.proxy_headers = {
                    **(rest.proxy_headers or {}),
                    "Proxy-Authorization": auth.encode(),
                }
    session: aiohttp.ClientSession = rest.pool_manager
    # The only switch there is: ClientSession takes trust_env at construction,
    # which kubernetes-asyncio does itself (tests/kube/test_client.py checks
    # that the attribute is still there and still read).
    session._trust_env = False


class KubeApi:
    """Makes Kubernetes calls with a timeout, retries, counting and `KubeError`.

    Parameters
    ----------
    api_client
        The client from `create_api_client`; the caller closes it.
    request_timeout
        Seconds one attempt may take.
    retry
        How failed attempts are retried.
    on_call
        Hook counting every attempt by verb and kind.
    """

    def __init__(
        self,
        api_client: ApiClient,
        *,
        request_timeout: float,
        retry: RetryPolicy | None = None,
        on_call: CallHook | None = None,
    ) -> None:
        self.api_client = api_client
        """The underlying kubernetes-asyncio client."""
        self.request_timeout = request_timeout
        """Seconds one attempt may take."""
        self.retry = retry or RetryPolicy()
        """How failed attempts are retried."""
        self._on_call = on_call

    def record(self, verb: str, kind: str, *, error: bool) -> None:
        """Count one attempt made outside `call` (a watch connection)."""
        if self._on_call is not None:
            self._on_call(verb, kind, error)

    async def call(
        self,
        verb: str,
        kind: str,
        method: Callable[..., Awaitable[Any]],
        *args: Any,
        namespace: str | None = None,
        name: str | None = None,
        accept: Collection[int] = (),
        **kwargs: Any,
    ) -> Reply:
        """Call a kubernetes-asyncio API method, retrying transient failures.

        Parameters
        ----------
        verb
            Verb for errors, logs and counts (``create``, ``list``, ...).
        kind
            Kind for errors, logs and counts (``Pod``, ...).
        method
            A bound method of a generated API class, such as
            ``CoreV1Api(client).create_namespaced_pod``.
        *args
            Its positional arguments.
        namespace
            Namespace addressed, for the error text.
        name
            Object addressed, for the error text.
        accept
            Error statuses that are answers rather than failures (404 for
            a delete, 409 for a create): returned, not raised, not retried.
        **kwargs
            Its keyword arguments (``body``, ``label_selector``, ...).

        Returns
        -------
        Reply
            The status and parsed body.

        Raises
        ------
        KubeError
            If the call failed with a status not in ``accept``, after the
            retries when the failure was transient.
        """
        return await self._call(
            verb,
            kind,
            method,
            args,
            kwargs,
            namespace=namespace,
            name=name,
            accept=accept,
            success=_whole_reply,
        )

    async def stream(
        self,
        verb: str,
        kind: str,
        method: Callable[..., Awaitable[Any]],
        *args: Any,
        consume: BodyConsumer[_T],
        namespace: str | None = None,
        name: str | None = None,
        accept: Collection[int] = (),
        **kwargs: Any,
    ) -> _T | Reply:
        """Call like `call`, but hand a success's body to ``consume`` as it arrives.

        ``consume`` gets the body in chunks of at most 64 KiB, read from
        the connection as it asks for them, all within the request's
        timeout; the body of an error is read whole and parsed as by
        `call`.  Failures are retried as by `call`, those met while
        ``consume`` reads included, so ``consume`` is called afresh for
        each attempt and must keep nothing from an earlier one.

        Parameters
        ----------
        verb, kind, method, *args, namespace, name, accept, **kwargs
            As for `call`.
        consume
            Reads a success's body from its chunks and returns what the
            caller keeps of it; raises `UnreadableBodyError` for a body it
            cannot make sense of.

        Returns
        -------
        object
            What ``consume`` returned for a success, or the `Reply` of a
            status in ``accept``.

        Raises
        ------
        KubeError
            As `call` does; also, without retries, when ``consume`` raised
            `UnreadableBodyError` (with the answer's status and the reason).
        """

        async def read(response: aiohttp.ClientResponse) -> _T:
            try:
                return await consume(response.content.iter_chunked(_CHUNK_SIZE))
            except UnreadableBodyError as error:
                raise KubeError(
                    verb=verb,
                    kind=kind,
                    namespace=namespace,
                    name=name,
                    status=response.status,
                    reason=response.reason,
                    message=str(error),
                ) from error

        return await self._call(
            verb,
            kind,
            method,
            args,
            kwargs,
            namespace=namespace,
            name=name,
            accept=accept,
            success=read,
        )

    async def _call(
        self,
        verb: str,
        kind: str,
        method: Callable[..., Awaitable[Any]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        namespace: str | None,
        name: str | None,
        accept: Collection[int],
        success: Callable[[aiohttp.ClientResponse], Awaitable[_T]],
    ) -> _T | Reply:
        """Make attempts until one answers, as `call` describes."""
        attempt = 1
        while True:
            try:
                result = await self._attempt(
                    verb,
                    kind,
                    method,
                    args,
                    kwargs,
                    namespace=namespace,
                    name=name,
                    success=success,
                )
            except KubeError as error:
                self.record(verb, kind, error=True)
                if not error.retryable or attempt >= self.retry.attempts:
                    raise
                delay = self.retry.delay(attempt, retry_after=error.retry_after)
                _LOG.info(
                    "Retrying Kubernetes call",
                    call=f"{verb} {kind} {error.target}",
                    error=str(error),
                    attempt=attempt,
                    delay=round(delay, 3),
                )
                attempt += 1
                await asyncio.sleep(delay)
                continue
            if isinstance(result, Reply) and not result.ok and result.status not in accept:
                self.record(verb, kind, error=True)
                raise _error_from_body(
                    verb, kind, namespace, name, result.status, result.body, reason=None
                )
            self.record(verb, kind, error=False)
            return result

    async def _attempt(
        self,
        verb: str,
        kind: str,
        method: Callable[..., Awaitable[Any]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        namespace: str | None,
        name: str | None,
        success: Callable[[aiohttp.ClientResponse], Awaitable[_T]],
    ) -> _T | Reply:
        """Make one request; raise `KubeError` only for retryable failures.

        A success (2xx) is read by ``success``; any other answer is
        returned as a `Reply` of its parsed body.
        """
        timeout = self.request_timeout
        try:
            async with asyncio.timeout(timeout):
                response = await method(
                    *args, _preload_content=False, _request_timeout=timeout, **kwargs
                )
                try:
                    status: int = response.status
                    if 200 <= status < 300:
                        return await success(response)
                    phrase: str | None = response.reason
                    retry_after = response.headers.get("Retry-After")
                    data: bytes = await response.read()
                finally:
                    response.release()
        except ApiException as exc:
            # Raised before any answer when the client itself objects.
            status, phrase, retry_after = exc.status or 0, exc.reason, None
            data = exc.body.encode() if isinstance(exc.body, str) else (exc.body or b"")
        except TimeoutError:
            raise KubeError(
                verb=verb,
                kind=kind,
                namespace=namespace,
                name=name,
                status=None,
                reason=None,
                message=f"no answer within {timeout:g} s",
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise KubeError(
                verb=verb,
                kind=kind,
                namespace=namespace,
                name=name,
                status=None,
                reason=None,
                message=f"connection error: {str(exc) or type(exc).__name__}",
            ) from exc
        body = _parse_body(data)
        if status in _RETRYABLE_STATUSES:
            error = _error_from_body(verb, kind, namespace, name, status, body, reason=phrase)
            error.retry_after = _seconds(retry_after)
            raise error
        return Reply(status=status, body=body)


@contextmanager
def collector_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector for a block that cannot yield.

    A LIST of 10,000 pods is a million new dicts, lists and strings, and
    each allocation counts towards the collector's thresholds: left on, it
    runs again and again over the large, cycle-free result, while it is
    parsed (three quarters of ``json.loads``) and while it is turned into
    labd's records (twenty times the cost of the conversion itself).
    Neither builds a cycle, so pausing the collector loses nothing.  The
    block should also drop the parsed result before it ends: objects freed
    while paused no longer count, so no collection is owed afterwards.  It
    must not await, or other code would run with the collector paused.
    """
    paused = gc.isenabled()
    if paused:
        gc.disable()
    try:
        yield
    finally:
        if paused:
            gc.enable()


async def _whole_reply(response: aiohttp.ClientResponse) -> Reply:
    """Read a success's body whole and parse it (see `KubeApi.call`)."""
    return Reply(status=response.status, body=_parse_body(await response.read()))


def _parse_body(data: bytes) -> dict[str, Any]:
    """Parse a response body; a body that is not a JSON object becomes ``text``."""
    if not data:
        return {}
    try:
        parsed = json.loads(data)
    except ValueError:
        return {"text": data.decode("utf-8", "replace")[:500]}
    return parsed if isinstance(parsed, dict) else {"text": str(parsed)[:500]}


def _error_from_body(
    verb: str,
    kind: str,
    namespace: str | None,
    name: str | None,
    status: int,
    body: dict[str, Any],
    *,
    reason: str | None,
) -> KubeError:
    """Build a `KubeError` from a failed answer, preferring its ``Status``."""
    if body.get("kind") == "Status":
        reason = str(body.get("reason") or reason or "") or None
        message = str(body.get("message") or "")
    else:
        message = str(body.get("text") or "")
    return KubeError(
        verb=verb,
        kind=kind,
        namespace=namespace,
        name=name,
        status=status,
        reason=reason,
        message=message or "no message",
    )


def _seconds(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return max(0.0, float(text))
    except ValueError:
        return None
