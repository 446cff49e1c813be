"""Configuration of copied secrets: ``lab.secrets``, ``pull_secret``, ``secrets_namespace``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from labd.config import ConfigError, CopiedSecretConfig, load_config
from labd.config import settings as config_module


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "labd.yaml"
    path.write_text(text)
    return path


def problems(path: Path | None, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path, environ=environ or {})
    return [str(problem) for problem in info.value.problems]


VALID = """
lab:
  secrets_namespace: labd
  pull_secret: pull-secret
  volumes:
    - {name: home, mount_path: /home, storage: 1Gi}
  secrets:
    - secret_name: lab-secrets
      secret_key: butler-token
      env: BUTLER_TOKEN
    - secret_name: lab-secrets
      secret_key: aws.ini
      path: /opt/lab/secrets/aws.ini
    - secret_name: other.secrets
      secret_key: both
      env: BOTH
      path: /opt/lab/both/
"""


def test_secrets_load(tmp_path: Path) -> None:
    lab = load_config(write(tmp_path, VALID), environ={}).lab
    assert lab.secrets_namespace == "labd"
    assert lab.pull_secret == "pull-secret"
    assert lab.copies_secrets
    assert lab.secrets == [
        CopiedSecretConfig(
            secret_name="lab-secrets", secret_key="butler-token", env="BUTLER_TOKEN"
        ),
        CopiedSecretConfig(
            secret_name="lab-secrets", secret_key="aws.ini", path="/opt/lab/secrets/aws.ini"
        ),
        CopiedSecretConfig(
            secret_name="other.secrets", secret_key="both", env="BOTH", path="/opt/lab/both"
        ),
    ]


def test_nothing_copied_by_default() -> None:
    lab = load_config(None, environ={}).lab
    assert (lab.secrets, lab.pull_secret, lab.secrets_namespace) == ([], None, None)
    assert not lab.copies_secrets


def test_secrets_from_the_environment() -> None:
    environ = {
        "LABD_LAB__SECRETS_NAMESPACE": "labd",
        "LABD_LAB__SECRETS": json.dumps([{"secret_name": "s", "secret_key": "k", "env": "K"}]),
    }
    lab = load_config(None, environ=environ).lab
    assert lab.secrets == [CopiedSecretConfig(secret_name="s", secret_key="k", env="K")]


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        (
            {"secret_name": "Lab_Secrets", "secret_key": "k"},
            "lab.secrets[0].secret_name: 'Lab_Secrets' is not a Kubernetes object name",
        ),
        (
            {"secret_name": "s", "secret_key": "a/b"},
            "lab.secrets[0].secret_key: 'a/b' is not a Secret key",
        ),
        (
            {"secret_name": "s", "secret_key": "..k"},
            "lab.secrets[0].secret_key: '..k' is not a Secret key",
        ),
        (
            {"secret_name": "s", "secret_key": "k", "env": "1TOKEN"},
            "lab.secrets[0].env: '1TOKEN' is not a valid environment variable name",
        ),
        (
            {"secret_name": "s", "secret_key": "k", "path": "etc/token"},
            "lab.secrets[0].path: 'etc/token' is not an absolute file path",
        ),
        (
            {"secret_name": "s", "secret_key": "k", "path": "/etc/../token"},
            "lab.secrets[0].path: '/etc/../token' must not contain '..'",
        ),
        (
            {"secret_name": "s", "secret_key": "k", "mode": "0400"},
            "lab.secrets[0].mode: unknown key (check the spelling)",
        ),
        (
            {"secret_key": "k"},
            "lab.secrets[0].secret_name: required key is missing",
        ),
    ],
)
def test_bad_entries_are_named(tmp_path: Path, entry: dict[str, str], expected: str) -> None:
    text = json.dumps({"lab": {"secrets_namespace": "labd", "secrets": [entry]}})
    (problem,) = problems(write(tmp_path, text))
    assert problem.startswith(expected), problem


@pytest.mark.parametrize(
    ("entries", "expected"),
    [
        (
            [{"secret_key": "k"}, {"secret_key": "k"}],
            "secret_key 'k' is used twice",
        ),
        (
            [{"secret_key": "a", "env": "TOKEN"}, {"secret_key": "b", "env": "TOKEN"}],
            "env 'TOKEN' is used twice",
        ),
        (
            [{"secret_key": "a", "path": "/etc/t"}, {"secret_key": "b", "path": "/etc/t/"}],
            "path '/etc/t' is used twice",
        ),
        ([{"secret_key": "a", "path": "/tmp"}], "path '/tmp' is used twice"),
        ([{"secret_key": "a", "path": "/home"}], "path '/home' is used twice"),
    ],
)
def test_clashes_are_refused(tmp_path: Path, entries: list[dict[str, str]], expected: str) -> None:
    secrets = [{"secret_name": "s", **entry} for entry in entries]
    lab = {
        "secrets_namespace": "labd",
        "secrets": secrets,
        "volumes": [{"name": "home", "mount_path": "/home", "storage": "1Gi"}],
    }
    (problem,) = problems(write(tmp_path, json.dumps({"lab": lab})))
    assert problem.startswith(f"lab: secrets: {expected}"), problem


def test_bad_pull_secret_and_namespace(tmp_path: Path) -> None:
    text = json.dumps({"lab": {"pull_secret": "Pull", "secrets_namespace": "a.b"}})
    found = problems(write(tmp_path, text))
    assert [p.split(":")[0] for p in found] == ["lab.pull_secret", "lab.secrets_namespace"]


@pytest.mark.parametrize("key", ["secrets", "pull_secret"])
def test_no_namespace_outside_the_cluster_is_an_error(tmp_path: Path, key: str) -> None:
    value = [{"secret_name": "s", "secret_key": "k"}] if key == "secrets" else "pull"
    (problem,) = problems(write(tmp_path, json.dumps({"lab": {key: value}})))
    assert problem.startswith("lab: lab.secrets or lab.pull_secret is set but "), problem
    assert "set lab.secrets_namespace" in problem


def test_in_cluster_defaults_to_labds_own_namespace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    namespace_file = tmp_path / "namespace"
    namespace_file.write_text("labd-system\n")
    monkeypatch.setattr(config_module, "SERVICE_ACCOUNT_NAMESPACE_FILE", namespace_file)
    text = json.dumps(
        {"kubernetes": {"in_cluster": True}, "lab": {"pull_secret": "pull"}},
    )
    assert load_config(write(tmp_path, text), environ={}).lab.secrets_namespace == "labd-system"
    configured = json.dumps(
        {"kubernetes": {"in_cluster": True}, "lab": {"pull_secret": "p", "secrets_namespace": "x"}}
    )
    assert load_config(write(tmp_path, configured), environ={}).lab.secrets_namespace == "x"


def test_in_cluster_without_a_namespace_file_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(config_module, "SERVICE_ACCOUNT_NAMESPACE_FILE", tmp_path / "absent")
    text = json.dumps({"kubernetes": {"in_cluster": True}, "lab": {"pull_secret": "pull"}})
    (problem,) = problems(write(tmp_path, text))
    assert problem.startswith("lab: lab.secrets_namespace is unset and labd's own namespace "), (
        problem
    )
    assert str(tmp_path / "absent") in problem
