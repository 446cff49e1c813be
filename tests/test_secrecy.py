"""The one rule of what is secret, and the redaction of free text."""

from __future__ import annotations

import pytest

from labd.lab.secrecy import is_secret_name, redact_text


@pytest.mark.parametrize(
    "name",
    [
        "api_key",
        "ACCESS_KEY",
        "DB_PASS",
        "COOKIE",
        "credentials",
        "passwd",
        "github_token",
        "JUPYTERHUB_API_TOKEN",
        "aws_secret_access_key",
        "session_id",
        "X-Auth",
        "SSH_KEY",
        "PASS",
        "apiKey",
        "XAuthToken",
        "Set-Cookie",
        "Proxy-Authorization",
        "client.secret",
        "PGPASSWORD",
        "GITHUBTOKEN",
        "JSESSIONID",
        "jwt",
        "webhook_signature",
    ],
)
def test_secret_names(name: str) -> None:
    assert is_secret_name(name)


@pytest.mark.parametrize(
    "name",
    [
        "HOME",
        "PATH",
        "LANG",
        "PWD",
        "JUPYTERHUB_SERVICE_PREFIX",
        "JUPYTERHUB_API_URL",
        "JUPYTERHUB_OAUTH_CALLBACK_URL",
        # Secret words inside longer words are not secret words.
        "KEYBOARD_LAYOUT",
        "PASSENGER_COUNT",
        "COMPASS_HEADING",
        "TOKENIZERS_PARALLELISM",
        "authenticator",
        "author",
        "monkey",
        # Exceptions name what went wrong.
        "KeyError",
        "InvalidTokenError",
        "auth_exception",
        "lab_id",
        "username",
        "",
    ],
)
def test_plain_names(name: str) -> None:
    assert not is_secret_name(name)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Authorization: Bearer abc.def", "Authorization: [redacted]"),
        ("sent Bearer abcdef123 along", "sent Bearer [redacted] along"),
        ("api_key=k-1 DB_PASS: p-2 next", "api_key=[redacted] DB_PASS: [redacted] next"),
        ('{"apiKey": "two words", "name": "x"}', '{"apiKey": "[redacted]", "name": "x"}'),
        ("{'COOKIE': 'c-3', 'LANG': 'C'}", "{'COOKIE': '[redacted]', 'LANG': 'C'}"),
        ("Cookie: a=b; session=xyz", "Cookie: [redacted]; session=[redacted]"),
        (
            "url=https://h/x?access_token=t-4&page=2",
            "url=https://h/x?access_token=[redacted]&page=2",
        ),
        ("https://ghp_aa@github.com/org/repo", "https://[redacted]@github.com/org/repo"),
        ("sa eyJhbGciOi.eyJzdWIiOi.c2ln end", "sa [redacted] end"),
        ("slack xoxb-1-2-abc end", "slack [redacted] end"),
        ("pushed with ghp_" + "a" * 36, "pushed with [redacted]"),
        ('    token = "tok-local"', '    token = "[redacted]"'),
        ("KEYBOARD_LAYOUT=us PASSENGER_COUNT=4", "KEYBOARD_LAYOUT=us PASSENGER_COUNT=4"),
        ("Lab pod failed: Evicted: low on memory", "Lab pod failed: Evicted: low on memory"),
        ("KeyError: 'spec'", "KeyError: 'spec'"),
        ("KeyError: 'token=t-5'", "KeyError: 'token=[redacted]'"),
    ],
)
def test_redact_text(text: str, expected: str) -> None:
    assert redact_text(text) == expected
