"""labd's REST API for JupyterHub: routes, authentication, errors and event streams.

See ``docs/api.md`` for the contract.
"""

from labd.api.app import create_app
from labd.api.auth import Access, Authenticator, Caller, TokenFileError, hash_token
from labd.api.sse import EventStreams

__all__ = [
    "Access",
    "Authenticator",
    "Caller",
    "EventStreams",
    "TokenFileError",
    "create_app",
    "hash_token",
]
