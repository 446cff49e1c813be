"""Secrecy: which names hold secrets, and how credentials are cut out of text.

Three places in labd must agree on what a secret is: the service, which
puts the secret environment variables of a create request into the lab's
Kubernetes Secret (the others go into a ConfigMap and the database); the
logs, which redact secret fields; and the alerts, which scrub error texts
before they leave for Slack.  When each kept its own pattern they drifted
apart (one was case-sensitive and let ``api_key`` and ``DB_PASS`` into the
database), so the rule lives here, once.

The name rule works on the words of a name, not on substrings, so that
``KEYBOARD_LAYOUT``, ``PASSENGER_COUNT`` or ``TOKENIZERS_PARALLELISM`` stay
readable while ``api_key``, ``DB_PASS`` or ``X-Auth`` do not.  A name is cut
into words at anything that is not a letter or a digit and at camelCase
humps, lowercased, and a plural ``s`` is dropped.  It is secret when one of
its words is in `SECRET_WORDS`, or ends in one of `SECRET_ENDINGS` (names
written without separators: ``PGPASSWORD``, ``GITHUBTOKEN``).  A false
positive costs little (a value kept in a Secret rather than a ConfigMap, a
log field shown as ``[redacted]``); a false negative leaks a credential.
Two exceptions keep tracebacks readable and the shell working: a name whose
last word is ``error``, ``exception`` or ``warning`` is not secret (the
``'spec'`` of ``KeyError: 'spec'`` is no key), and ``pwd`` is not a secret
word (``PWD`` is the working directory).

Free text (library log messages, tracebacks, Kubernetes error bodies) has
no field names to go by, so `redact_text` looks for the shapes credentials
take there, using the same name rule for ``name=value`` pairs.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["REDACTED", "SECRET_ENDINGS", "SECRET_WORDS", "is_secret_name", "redact_text"]

REDACTED: Final = "[redacted]"
"""What a secret value is replaced with."""

SECRET_ENDINGS: Final = frozenset(
    {
        "accesskey",
        "apikey",
        "credential",
        "passphrase",
        "passwd",
        "password",
        "privatekey",
        "secret",
        "secretkey",
        "sessionid",
        "token",
    }
)
"""Words that make a name secret even at the end of a longer word (``PGPASSWORD``)."""

SECRET_WORDS: Final = SECRET_ENDINGS | {
    "auth",
    "authorization",
    "cookie",
    "jwt",
    "key",
    "pass",
    "session",
    "signature",
}
"""Words that make a name secret when they are a whole word of it (``DB_PASS``, ``SSH_KEY``).

The words added to `SECRET_ENDINGS` here are too short or too common to
count inside longer words: ``compass``, ``monkey``, ``oauth``.
"""

_NOT_SECRET_LAST: Final = frozenset({"error", "exception", "warning"})
"""Last words of names that tell what went wrong (``KeyError: 'spec'``), not a secret."""

_CHUNKS = re.compile(r"[A-Za-z0-9]+")
_WORDS = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")


def _words(name: str) -> list[str]:
    """The lowercased words of a name: ``XAuthToken`` gives ``x``, ``auth``, ``token``."""
    return [word.lower() for chunk in _CHUNKS.findall(name) for word in _WORDS.findall(chunk)]


def _singular(word: str) -> str:
    """The word without a final ``s`` (``keys``); callers check the word itself too (``pass``)."""
    return word[:-1] if word.endswith("s") else word


def is_secret_name(name: str) -> bool:
    """Whether a field, key or variable of this name holds a secret.

    Parameters
    ----------
    name
        An environment variable, a log field, a JSON key, an HTTP header.

    Returns
    -------
    bool
        `True` if one of its words is a secret word (``API_KEY``,
        ``db-pass``, ``sessionId``, ``Set-Cookie``) or ends in a secret
        ending (``PGPASSWORD``), unless it names an error (``KeyError``,
        ``InvalidTokenError``); the case does not matter.
    """
    words = _words(name)
    if words and _singular(words[-1]) in _NOT_SECRET_LAST:
        return False
    return any(
        word in SECRET_WORDS
        or _singular(word) in SECRET_WORDS
        or _singular(word).endswith(tuple(SECRET_ENDINGS))
        for word in words
    )


_SHAPES: Final[list[tuple[re.Pattern[str], str]]] = [
    # An Authorization header, whatever its scheme: up to the end of the value.
    (
        re.compile(r"\b((?:proxy-)?authorization[\"']?\s*[:=]\s*[\"']?)[^\r\n,;\"'}]*", re.I),
        rf"\1{REDACTED}",
    ),
    (re.compile(r"\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+", re.I), rf"\1 {REDACTED}"),
    # Credentials inside a URL: scheme://user:password@host or scheme://token@host.
    (re.compile(r"\b([a-z][a-z0-9+.-]*://)[^/?#\s@]+@", re.I), rf"\1{REDACTED}@"),
    # JSON Web Tokens (service-account tokens among them).
    (re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"), REDACTED),
    # Slack and GitHub tokens, recognisable by their prefixes.
    (re.compile(r"\bxox[a-z]-[A-Za-z0-9-]+"), REDACTED),
    (re.compile(r"\b(?:gh[oprsu]|github_pat)_[A-Za-z0-9_]{20,}"), REDACTED),
]

_ASSIGNMENT = re.compile(r"\b(?P<name>[A-Za-z_][\w.-]*)[\"']?\s*[:=]\s*(?P<quote>[\"']?)")
"""``name=value``, ``name: value``, ``"name": "value"``: up to where the value starts."""

_VALUE: Final = {
    "": re.compile(r"[^\s\"',;&{}\[\]]+"),
    '"': re.compile(r'(?:\\.|[^"\\\r\n])+'),
    "'": re.compile(r"(?:\\.|[^'\\\r\n])+"),
}
"""A value, by the quote that opens it: a quoted one runs to its closing quote."""


def _redact_assignments(text: str) -> str:
    """Replace the values of ``name=value`` pairs whose name is secret.

    The pattern stops where the value starts, so that a value that is not
    replaced is searched as well (``url=https://host/?token=abc``).
    """
    pieces: list[str] = []
    done = 0
    for match in _ASSIGNMENT.finditer(text):
        if match.start() < done or not is_secret_name(match["name"]):
            continue
        value = _VALUE[match["quote"]].match(text, match.end())
        if value is None:
            continue
        pieces += [text[done : value.start()], REDACTED]
        done = value.end()
    pieces.append(text[done:])
    return "".join(pieces)


def redact_text(text: str) -> str:
    """Replace what looks like a credential in free text with ``[redacted]``.

    Parameters
    ----------
    text
        A log message, a traceback, an error text from Kubernetes.

    Returns
    -------
    str
        The text with the values of Authorization headers, ``Bearer`` and
        ``Basic`` credentials, URL user information, JSON Web Tokens, Slack
        and GitHub tokens, and the values of ``name=value``, ``name: value``
        and ``"name": "value"`` pairs whose name is secret (`is_secret_name`)
        replaced.
    """
    for pattern, replacement in _SHAPES:
        text = pattern.sub(replacement, text)
    return _redact_assignments(text)
