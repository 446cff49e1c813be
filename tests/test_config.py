"""Tests for labd.config and the check-config command."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, get_args, get_origin

import pytest
from click.testing import CliRunner
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from labd.cli.config_command import check_config
from labd.cli.main import main
from labd.config import (
    MAX_BYTES,
    MAX_CPU,
    MAX_DURATION,
    Config,
    ConfigError,
    ImageConfig,
    ImagesConfig,
    LabConfig,
    SizeConfig,
    TimeoutsConfig,
    load_config,
)
from labd.images.catalog import build_image_list
from labd.lab.quantity import format_bytes, parse_quantity
from labd.lab.reference import ImageReference

DATA = Path(__file__).parent / "data" / "config"
EXAMPLE = Path(__file__).parent.parent / "systemd" / "labd.example.yaml"
DOCS = Path(__file__).parent.parent / "docs" / "configuration.md"
DIGEST_A = "sha256:" + "0123456789abcdef" * 4
GiB = 2**30


def problems_of(path: Path | None, environ: dict[str, str] | None = None) -> list[str]:
    """Load a configuration that must fail and return its problem lines."""
    with pytest.raises(ConfigError) as info:
        load_config(path, environ=environ or {})
    lines = str(info.value).splitlines()
    assert lines == [str(problem) for problem in info.value.problems]
    return lines


def recommended_of(images: ImagesConfig) -> ImageConfig:
    """The image the catalog recommends for a configuration, before any registry read."""
    recommended = build_image_list(images, {}).recommended
    assert recommended is not None, f"{images.recommended!r} names no available image"
    return recommended


# Loading valid configurations


def test_defaults_without_file() -> None:
    config = load_config(None, environ={})
    assert config.database_url == "sqlite+aiosqlite:///labd.db"
    assert (config.bind_host, config.bind_port) == ("127.0.0.1", 8080)
    assert config.path_prefix == ""
    assert config.token_file is None
    assert config.max_body_size == 65536
    assert config.kubernetes.kubeconfig is None
    assert not config.kubernetes.in_cluster
    assert config.namespace_prefix == "labd"
    assert config.lab.uid == 1000
    assert config.lab.internal_url_template == "http://lab.{namespace}:{port}{service_prefix}"
    assert list(config.sizes) == ["small", "medium", "large"]
    assert config.sizes["medium"].limits.cpu == 2.0
    assert config.sizes["medium"].limits.memory == 8 * GiB
    assert config.sizes["small"].requests.cpu == 0.25
    assert config.default_size == "medium"
    recommended = recommended_of(config.images)
    assert recommended.reference == "ghcr.io/labd/sciplat-lab:w_2026_47"
    assert recommended.image_class == "weekly"
    assert config.timeouts.spawn == 600
    assert config.reconcile_interval == 300
    assert (config.retry.initial, config.retry.maximum) == (1.0, 60.0)
    assert (config.log_level, config.log_format) == ("info", "auto")


def test_empty_file_means_defaults(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing set\n")
    assert load_config(path, environ={}) == load_config(None, environ={})


def test_full_file() -> None:
    config = load_config(DATA / "full.yaml", environ={})
    assert config.database_url == "postgresql+asyncpg://labd:s3cret@db.example:5432/labd"
    assert config.database_url_display == "postgresql+asyncpg://labd:***@db.example:5432/labd"
    assert (config.bind_host, config.bind_port) == ("::1", 9090)
    assert config.path_prefix == "/labd"
    assert config.token_file == Path("/etc/labd/tokens")
    assert config.max_body_size == 131072
    kube = config.kubernetes
    assert kube.kubeconfig == Path("/etc/labd/kubeconfig")
    assert kube.context == "lab-cluster"
    assert (kube.request_timeout, kube.max_concurrent_operations, kube.watch_timeout) == (
        10,
        8,
        60,
    )
    assert config.namespace_prefix == "nb"
    lab = config.lab
    assert (lab.uid, lab.gid, lab.port) == (2000, 2001, 8889)
    assert lab.env == {"EXTERNAL_URL": "https://lab.example", "FIREFLY_ROUTE": "/firefly"}
    assert lab.hub_namespace == "hub"
    assert lab.pull_policy == "Always"
    assert lab.pod_delete_grace == 0
    assert lab.resource_quota
    home, datasets = lab.volumes
    assert (home.name, home.mount_path, home.storage, home.storage_class) == (
        "home",
        "/home",
        10 * GiB,
        "fast",
    )
    assert (datasets.storage, datasets.access_mode, datasets.read_only) == (
        10**12,
        "ReadOnlyMany",
        True,
    )
    assert list(config.sizes) == ["tiny", "large"]
    tiny = config.sizes["tiny"]
    assert (tiny.limits.cpu, tiny.limits.memory) == (0.5, GiB)
    assert (tiny.requests.cpu, tiny.requests.memory) == (0.1, 256 * 2**20)
    assert tiny.description == "For reading notebooks"
    assert config.sizes["large"].limits.memory == 32 * 10**9
    assert config.default_size == "tiny"
    assert (config.timeouts.spawn, config.timeouts.delete) == (900, 120)
    assert config.reconcile_interval == 60
    assert (config.retry.initial, config.retry.maximum) == (0.5, 30)
    assert (config.log_level, config.log_format) == ("debug", "json")


def test_full_file_images() -> None:
    images = load_config(DATA / "full.yaml", environ={}).images
    classes = {image.reference.split("@")[0]: image.image_class for image in images.available}
    assert classes == {
        "registry.example/lab:w_2026_47": "weekly",
        "registry.example/lab:w_2026_46": "weekly",
        "registry.example/lab:r9_1": "release",
        "registry.example/lab:r10_0": "release",
        "registry.example/lab:d_2026_11_24": "daily",
        "registry.example/lab:exp_new_kernel": "experimental",
        "registry.example/lab:custom": "experimental",
        "localhost:5000/lab": "other",
    }
    listed = build_image_list(images, {})
    recommended = recommended_of(images)
    assert recommended.reference == f"registry.example/lab:w_2026_47@{DIGEST_A}"
    assert recommended.display_name == "Weekly 2026_47"
    assert listed.by_tag("r9_1") is images.available[2]
    assert listed.by_tag("nope") is None
    latest_release = listed.latest("release")
    assert latest_release is not None
    assert latest_release.tag == "r10_0"
    latest_weekly = listed.latest("weekly")
    assert latest_weekly is not None
    assert latest_weekly.tag == "w_2026_47"
    assert listed.latest("other") is None


def test_example_file_validates() -> None:
    config = load_config(EXAMPLE, environ={})
    assert recommended_of(config.images).image_class == "weekly"


def test_models_are_frozen() -> None:
    config = load_config(None, environ={})
    with pytest.raises(ValidationError, match="frozen"):
        config.log_level = "debug"  # type: ignore[misc]
    with pytest.raises(ValidationError, match="frozen"):
        config.timeouts.spawn = 1  # type: ignore[misc]


# Environment overrides


def test_env_overrides_file() -> None:
    environ = {
        "LABD_DATABASE_URL": "sqlite+aiosqlite:////var/lib/labd/labd.db",
        "LABD_KUBERNETES__KUBECONFIG": "/run/kubeconfig",
        "LABD_TIMEOUTS__SPAWN": "120",
        "labd_log_level": "warning",
        "LABD_SIZES__LARGE__LIMITS__MEMORY": "64Gi",
        "UNRELATED": "ignored",
    }
    config = load_config(DATA / "full.yaml", environ=environ)
    assert config.database_url == "sqlite+aiosqlite:////var/lib/labd/labd.db"
    assert config.kubernetes.kubeconfig == Path("/run/kubeconfig")
    assert config.kubernetes.context == "lab-cluster"  # sibling kept from the file
    assert config.timeouts.spawn == 120
    assert config.timeouts.delete == 120  # from the file
    assert config.log_level == "warning"
    assert config.sizes["large"].limits.memory == 64 * GiB
    assert config.sizes["large"].requests.memory == 8 * GiB


def test_env_json_value() -> None:
    environ = {
        "LABD_LAB__ENV": '{"EXTERNAL_URL": "https://x.example"}',
        "LABD_IMAGES": (
            '{"recommended": "r1", "available": [{"reference": "registry.example/lab:r1"}]}'
        ),
    }
    config = load_config(None, environ=environ)
    assert config.lab.env == {"EXTERNAL_URL": "https://x.example"}
    assert recommended_of(config.images).image_class == "release"


def test_env_defaults_to_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LABD_RECONCILE_INTERVAL", "42")
    assert load_config(None).reconcile_interval == 42
    assert Config().reconcile_interval == 42


def test_env_errors_name_the_variable() -> None:
    environ = {"LABD_TIMEOUTS__SPAWN": "soon", "LABD_TIMEOUTS__SPWAN": "1"}
    assert problems_of(None, environ) == [
        "LABD_TIMEOUTS__SPAWN (timeouts.spawn): "
        "Input should be a valid number, unable to parse string as a number",
        "LABD_TIMEOUTS__SPWAN (timeouts.spwan): unknown key (check the spelling)",
    ]


def test_env_error_in_cross_field_check() -> None:
    environ = {"LABD_SIZES__TINY__LIMITS__CPU": "0.05"}
    assert problems_of(DATA / "full.yaml", environ) == [
        "LABD_SIZES__TINY__LIMITS__CPU (sizes.tiny): requests.cpu 0.1 exceeds limits.cpu 0.05"
    ]


def test_env_entry_replaces_default_sizes() -> None:
    environ = {"LABD_SIZES__SMALL__LIMITS__CPU": "0.1"}
    assert problems_of(None, environ) == [
        "LABD_SIZES__SMALL__LIMITS__CPU (sizes.small.limits.memory): required key is missing",
        "LABD_SIZES__SMALL__LIMITS__CPU (sizes.small.requests): required key is missing",
    ]


def test_env_bad_json() -> None:
    (line,) = problems_of(None, {"LABD_SIZES": "{small"})
    assert line.startswith("LABD_SIZES (sizes): not valid JSON (")


def test_env_bad_database_url_hides_password() -> None:
    environ = {"LABD_DATABASE_URL": "mysql+aiomysql://labd:hunter2@db/labd"}
    (line,) = problems_of(None, environ)
    assert line == (
        "LABD_DATABASE_URL (database_url): unsupported database driver 'mysql+aiomysql'; "
        "use sqlite+aiosqlite or postgresql+asyncpg"
    )


# Invalid files, one precise message each


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("size_without_limits", ["sizes.small.limits: required key is missing"]),
        (
            "wrong_types",
            [
                "max_body_size: Input should be a valid integer, unable to parse string as an "
                "integer",
                "kubernetes.in_cluster: Input should be a valid boolean, unable to interpret "
                "input",
                "lab.uid: 0 is root; labs run as a non-root user",
                "lab.port: Input should be a valid integer",
                "lab.env: invalid environment variable name(s): 'bad-name'",
                "log_level: Input should be 'debug', 'info', 'warning' or 'error'",
            ],
        ),
        (
            "requests_exceed_limits",
            [
                "sizes.small: requests.cpu 2.0 exceeds limits.cpu 1.0",
                "sizes.medium: requests.memory 8 GiB exceeds limits.memory 4 GiB",
            ],
        ),
        (
            "unknown_default_size",
            ["default_size: unknown size 'huge' (configured: large, medium, small)"],
        ),
        (
            "unknown_recommended",
            [
                "images.recommended: 'w_2026_48' is not among the available images "
                "(registry.example/lab:w_2026_47, registry.example/lab:w_2026_46)"
            ],
        ),
        (
            "bad_references",
            [
                "images.available[1].reference: 'registry.example/Lab:w_2026_47' has a "
                "malformed repository name 'registry.example/Lab' (the repository must be "
                "lowercase)",
                "images.available[2].reference: 'foo' has neither tag nor digest",
                "images.available[3].reference: 'registry.example/lab@sha256:abc' has a "
                "malformed digest 'sha256:abc' (expected 'sha256:' and 64 lowercase hex digits)",
                "images.available[4].reference: 'registry.example/lab:.hidden' has a malformed "
                "tag '.hidden' (letters, digits, '_', '.' and '-', at most 128, not starting "
                "with '.' or '-')",
                "images.available[5].reference: 'registry.example//lab:1' has a malformed "
                "repository name 'registry.example//lab'",
                "images.available[6].reference: 'registry.example/lab:w 1' contains whitespace",
            ],
        ),
        (
            "typo",
            [
                "timeouts.spwan: unknown key (check the spelling)",
                "namspace_prefix: unknown key (check the spelling)",
            ],
        ),
        (
            "bad_quantity",
            [
                "sizes.small.limits.memory: invalid quantity '4GB': unknown suffix 'GB' (use Ki, "
                "Mi, Gi, Ti, Pi, Ei, k, M, G, T, P, E, m, or an exponent like 1e3)",
                "sizes.small.requests.cpu: invalid quantity 'lots': does not start with a number",
            ],
        ),
        (
            "bad_database_driver",
            [
                "database_url: driver 'postgresql' is not async; use 'postgresql+asyncpg' "
                "(postgresql+asyncpg://...)"
            ],
        ),
        (
            "bad_bind_address",
            ["bind_address: '127.0.0.1:70000': port 70000 is out of range (0-65535)"],
        ),
    ],
)
def test_bad_file(name: str, expected: list[str]) -> None:
    assert problems_of(DATA / f"{name}.yaml") == expected


def test_bad_database_url_never_shows_password() -> None:
    (line,) = problems_of(DATA / "bad_database_driver.yaml")
    assert "hunter2" not in line
    (line,) = problems_of(None, {"LABD_DATABASE_URL": "postgresql+asyncpg://u:hunter2@h:port/x"})
    assert "hunter2" not in line
    assert line.endswith("not a valid SQLAlchemy URL (driver://user:pass@host/db)")


def test_yaml_syntax_error() -> None:
    path = DATA / "syntax_error.yaml"
    assert problems_of(path) == [
        f"{path}: YAML syntax error: line 4, column 1: expected ',' or '}}', but got "
        "'<scalar>' (while parsing a flow mapping started on line 3)"
    ]


def test_not_a_mapping() -> None:
    path = DATA / "not_a_mapping.yaml"
    assert problems_of(path) == [
        f"{path}: the top level must be a mapping of keys to values, not a list"
    ]


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    assert problems_of(path) == [f"{path}: no such file"]


def test_directory_instead_of_file(tmp_path: Path) -> None:
    assert problems_of(tmp_path) == [f"{tmp_path}: is a directory, not a file"]


def test_duplicate_yaml_key(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text("log_level: info\nlog_level: debug\n")
    assert problems_of(path) == [
        f"{path}: YAML syntax error: line 2, column 1: duplicate key 'log_level' "
        "(first defined on line 1)"
    ]


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        ("bind_address: localhost", "bind_address: 'localhost' is not host:port"),
        (
            "bind_address: '::1:8080'",
            "bind_address: '::1:8080': put an IPv6 address in brackets, as in [::1]:8080",
        ),
        ("bind_address: '[::g]:80'", "bind_address: '[::g]:80': invalid IPv6 address '::g'"),
        (
            "bind_address: '300.1.1.1:80'",
            "bind_address: '300.1.1.1:80': invalid IPv4 address '300.1.1.1'",
        ),
        ("bind_address: 'host:http'", "bind_address: 'host:http': port 'http' is not a number"),
        ("path_prefix: labd", "path_prefix: 'labd' must start with '/'"),
        (
            "path_prefix: /labd/",
            "path_prefix: '/labd/' must not end with '/' (use '' for no prefix)",
        ),
        ("max_body_size: 0", "max_body_size: Input should be greater than 0"),
        ("http: {header_timeout: 0}", "http.header_timeout: Input should be greater than 0"),
        (
            "http: {keepalive_timeout: .inf}",
            "http.keepalive_timeout: Input should be a finite number",
        ),
        ("http: {max_streams: 0}", "http.max_streams: Input should be greater than 0"),
        (
            "namespace_prefix: Labs",
            "namespace_prefix: 'Labs' is not a DNS label (lowercase letters, digits and '-', "
            "starting and ending with a letter or digit)",
        ),
        (
            f"namespace_prefix: {'a' * 41}",
            f"namespace_prefix: '{'a' * 41}' is longer than 40 characters",
        ),
        (
            "kubernetes: {in_cluster: true, kubeconfig: /k}",
            "kubernetes.in_cluster: in_cluster cannot be combined with kubeconfig",
        ),
        (
            "kubernetes: {request_timeout: 0}",
            "kubernetes.request_timeout: Input should be greater than 0",
        ),
        (
            "lab: {internal_url_template: 'http://{host}:{port}'}",
            "lab.internal_url_template: unknown placeholder(s) {host} (allowed: {namespace}, "
            "{port}, {service_prefix}, {pod_ip})",
        ),
        (
            "lab: {internal_url_template: 'http://lab.{namespace'}",
            "lab.internal_url_template: malformed template: expected '}' before end of string",
        ),
        (
            "lab: {volumes: [{name: home, mount_path: home, storage: 1Gi}]}",
            "lab.volumes[0].mount_path: 'home' is not an absolute path",
        ),
        (
            "lab: {volumes: [{name: a, mount_path: /a, storage: 1Gi},"
            " {name: a, mount_path: /b, storage: 1Gi}]}",
            "lab.volumes: two volumes have name 'a'",
        ),
        (
            "lab: {pull_policy: always}",
            "lab.pull_policy: Input should be 'Always', 'IfNotPresent' or 'Never'",
        ),
        ("lab: {uid: -5}", "lab.uid: -5 is negative"),
        ("sizes: {}", "sizes: Dictionary should have at least 1 item after validation, not 0"),
        (
            "sizes: {small: {limits: {cpu: 1, memory: 1Gi}, requests: {cpu: 1, memory: 1Gi}},"
            " Small: {limits: {cpu: 1, memory: 1Gi}, requests: {cpu: 1, memory: 1Gi}}}",
            "sizes: size 'Small' is defined twice (names are case-insensitive)",
        ),
        (
            "sizes: {small: {limits: {cpu: 0, memory: 1Gi}, requests: {cpu: 0, memory: 1Gi}}}"
            "\ndefault_size: small",
            "sizes.small.limits.cpu: Input should be greater than 0",
        ),
        ("timeouts: {spawn: -1}", "timeouts.spawn: Input should be greater than 0"),
        ("retry: {initial: 10, maximum: 5}", "retry.maximum: 5 is less than retry.initial 10"),
        (
            "images: {class_patterns: {weekly: '(' }, available: [{reference: 'a:b'}],"
            " recommended: b}",
            "images.class_patterns: weekly: invalid regular expression '(': missing ), "
            "unterminated subpattern at position 0",
        ),
        (
            "images: {available: [{reference: 'a:b'}]}",
            "images.recommended: required key is missing",
        ),
        (
            "images: {available: [{reference: 'a/x:1'}, {reference: 'b/x:1'}], recommended: '1'}",
            "images.recommended: '1' is ambiguous: it matches a/x:1, b/x:1",
        ),
        ("log_format: text", "log_format: Input should be 'auto', 'json' or 'console'"),
    ],
)
def test_bad_value(tmp_path: Path, yaml_text: str, expected: str) -> None:
    path = tmp_path / "labd.yaml"
    path.write_text(yaml_text + "\n")
    assert problems_of(path)[0] == expected


# Lab egress and ephemeral storage


def test_egress_defaults_allow_dns_and_the_hub_only() -> None:
    egress = load_config(None, environ={}).lab.egress
    assert (egress.allow_all, egress.dns, egress.hub) == (False, True, True)
    assert (egress.dns_namespace, egress.dns_pod_labels, egress.allow) == (None, {}, [])


def test_egress_entries_are_normalised(tmp_path: Path) -> None:
    path = tmp_path / "labd.yaml"
    path.write_text(
        "lab:\n"
        "  egress:\n"
        "    dns_namespace: kube-system\n"
        "    dns_pod_labels: {k8s-app: kube-dns}\n"
        "    allow:\n"
        "      - {cidr: 0.0.0.0/0, except: [10.0.0.0/8, 169.254.169.254], ports: [443]}\n"
        "      - {cidr: '2001:db8::1'}\n"
        "      - {namespace: mirrors, pod_labels: {app.example/name: devpi}, ports: [53],"
        " protocol: UDP}\n"
    )
    first, second, third = load_config(path, environ={}).lab.egress.allow
    assert (first.cidr, first.except_, first.ports) == (
        "0.0.0.0/0",
        ["10.0.0.0/8", "169.254.169.254/32"],
        [443],
    )
    assert (second.cidr, second.ports) == ("2001:db8::1/128", [])
    assert (third.namespace, third.pod_labels, third.protocol) == (
        "mirrors",
        {"app.example/name": "devpi"},
        "UDP",
    )


def test_egress_from_the_environment() -> None:
    environ = {
        "LABD_LAB__EGRESS__ALLOW_ALL": "true",
        "LABD_LAB__EGRESS__ALLOW": '[{"cidr": "10.20.30.0/24", "ports": [443]}]',
    }
    egress = load_config(None, environ=environ).lab.egress
    assert egress.allow_all
    assert [(rule.cidr, rule.ports) for rule in egress.allow] == [("10.20.30.0/24", [443])]


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("{cidr: 10.0.0.1/8}", ".cidr: '10.0.0.1/8' is not an IP network such as 10.20.0.0/16 "
         "(10.0.0.1/8 has host bits set)"),
        ("{cidr: 10.0.0.0/33}", ".cidr: '10.0.0.0/33' is not an IP network such as "
         "10.20.0.0/16 ('10.0.0.0/33' does not appear to be an IPv4 or IPv6 network)"),
        ("{cidr: 10.0.0.0/8, namespace: x}", ": set exactly one of cidr and namespace"),
        ("{ports: [443]}", ": set exactly one of cidr and namespace"),
        ("{cidr: 10.0.0.0/8, except: [11.0.0.0/16]}",
         ": except '11.0.0.0/16' is not a strict subnet of cidr '10.0.0.0/8'"),
        ("{cidr: 10.0.0.0/8, except: [10.0.0.0/8]}",
         ": except '10.0.0.0/8' is not a strict subnet of cidr '10.0.0.0/8'"),
        ("{cidr: 10.0.0.0/8, except: ['::/1']}",
         ": except '::/1' is not a strict subnet of cidr '10.0.0.0/8'"),
        ("{namespace: x, except: [10.0.0.0/8]}", ": except needs cidr"),
        ("{cidr: 10.0.0.0/8, pod_labels: {a: b}}", ": pod_labels needs namespace"),
        ("{namespace: Mirrors}", ".namespace: 'Mirrors' is not a DNS label (lowercase letters, "
         "digits and '-', starting and ending with a letter or digit)"),
        ("{namespace: x, pod_labels: {'a b': c}}", ".pod_labels: 'a b' is not a label key"),
        ("{namespace: x, pod_labels: {a: 'c d'}}", ".pod_labels: label 'a': 'c d' is not a "
         "label value"),
        ("{namespace: x, ports: [0]}", ".ports[0]: Input should be greater than or equal to 1"),
        ("{namespace: x, ports: [65536]}",
         ".ports[0]: Input should be less than or equal to 65535"),
        ("{namespace: x, ports: [true]}", ".ports[0]: Input should be a valid integer"),
        ("{namespace: x, ports: ['443']}", ".ports[0]: Input should be a valid integer"),
        ("{namespace: x, ports: [1], protocol: ICMP}",
         ".protocol: Input should be 'TCP', 'UDP' or 'SCTP'"),
        ("{namespace: x, protocol: UDP}", ": protocol applies to ports: without ports the rule "
         "allows every port and protocol; list the ports"),
        ("{namespace: x, to: y}", ".to: unknown key (check the spelling)"),
    ],
)  # fmt: skip
def test_bad_egress_entry(tmp_path: Path, entry: str, expected: str) -> None:
    path = tmp_path / "labd.yaml"
    path.write_text(f"lab: {{egress: {{allow: [{entry}]}}}}\n")
    (line,) = problems_of(path)
    assert line.startswith("lab.egress.allow[0]" + expected), line


def test_dns_pod_labels_need_dns_namespace() -> None:
    environ = {"LABD_LAB__EGRESS__DNS_POD_LABELS": '{"k8s-app": "kube-dns"}'}
    assert problems_of(None, environ) == [
        "LABD_LAB__EGRESS__DNS_POD_LABELS (lab.egress): dns_pod_labels needs dns_namespace"
    ]


def test_ephemeral_storage_defaults_and_settings() -> None:
    sizes = load_config(None, environ={}).sizes
    assert {(s.ephemeral_storage_limit, s.ephemeral_storage_request) for s in sizes.values()} == {
        (8 * GiB, 512 * 2**20)
    }
    explicit = SizeConfig.model_validate(
        {
            "limits": {"cpu": 1, "memory": "1Gi", "ephemeral_storage": "20Gi"},
            "requests": {"cpu": 1, "memory": "1Gi", "ephemeral_storage": "2Gi"},
        }
    )
    assert (explicit.ephemeral_storage_limit, explicit.ephemeral_storage_request) == (
        20 * GiB,
        2 * GiB,
    )
    small = SizeConfig.model_validate(
        {
            "limits": {"cpu": 1, "memory": "1Gi", "ephemeral_storage": "100Mi"},
            "requests": {"cpu": 1, "memory": "1Gi"},
        }
    )
    assert small.ephemeral_storage_request == 100 * 2**20


@pytest.mark.parametrize(
    ("limit", "requested", "expected"),
    [
        ("1Gi", "2Gi",
         "sizes.s: requests.ephemeral_storage 2 GiB exceeds limits.ephemeral_storage 1 GiB"),
        (None, "9Gi", "sizes.s: requests.ephemeral_storage 9 GiB exceeds "
         "limits.ephemeral_storage 8 GiB (the default)"),
        ("0", None, "sizes.s.limits.ephemeral_storage: Input should be greater than 0"),
        ("-1Gi", None, "sizes.s.limits.ephemeral_storage: Input should be greater than 0"),
        (".inf", None,
         "sizes.s.limits.ephemeral_storage: invalid quantity inf: not a finite number"),
        ("1e400", None,
         "sizes.s.limits.ephemeral_storage: invalid quantity '1e400': not a finite number"),
        ("1.5", None, "sizes.s.limits.ephemeral_storage: 1.5 is not a whole number of bytes"),
        (None, "8Gb", "sizes.s.requests.ephemeral_storage: invalid quantity '8Gb': unknown "
         "suffix 'Gb' (use Ki, Mi, Gi, Ti, Pi, Ei, k, M, G, T, P, E, m, or an exponent like 1e3)"),
    ],
)  # fmt: skip
def test_bad_ephemeral_storage(
    tmp_path: Path, limit: str | None, requested: str | None, expected: str
) -> None:
    def side(storage: str | None) -> str:
        extra = "" if storage is None else f", ephemeral_storage: {storage}"
        return f"{{cpu: 1, memory: 1Gi{extra}}}"

    path = tmp_path / "labd.yaml"
    path.write_text(
        f"default_size: s\nsizes: {{s: {{limits: {side(limit)}, requests: {side(requested)}}}}}\n"
    )
    assert problems_of(path) == [expected]


# Pieces of the public API


def test_bind_address_forms() -> None:
    config = load_config(None, environ={"LABD_BIND_ADDRESS": "[::]:0"})
    assert (config.bind_host, config.bind_port) == ("::", 0)
    config = load_config(None, environ={"LABD_BIND_ADDRESS": "lab-controller.internal:443"})
    assert (config.bind_host, config.bind_port) == ("lab-controller.internal", 443)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("4Gi", 4 * 2**30),
        ("512Mi", 512 * 2**20),
        ("1Ki", 1024),
        ("1G", 1e9),
        ("1.5k", 1500),
        ("500m", 0.5),
        ("1e3", 1000),
        ("2E", 2e18),
        ("2E2", 200),
        (".5", 0.5),
        ("3", 3),
        (2, 2),
        (0.25, 0.25),
        (" 1Ti ", 2**40),
    ],
)
def test_parse_quantity(text: str | int | float, value: float) -> None:
    assert parse_quantity(text) == value


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "invalid quantity '': empty"),
        ("Gi", "invalid quantity 'Gi': does not start with a number"),
        ("4gi", "invalid quantity '4gi': unknown suffix 'gi'"),
        ("1e", "invalid quantity '1e': unknown suffix 'e'"),
        ("1e999", "invalid quantity '1e999': not a finite number"),
    ],
)
def test_parse_quantity_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_quantity(text)


def test_parse_quantity_rejects_bool() -> None:
    with pytest.raises(ValueError, match="expected a number"):
        parse_quantity(True)


@pytest.mark.parametrize(
    ("size", "text"),
    [(0, "0 B"), (1023, "1023 B"), (1024, "1 KiB"), (1536 * 2**20, "1.5 GiB"), (4 * GiB, "4 GiB")],
)
def test_format_bytes(size: int, text: str) -> None:
    assert format_bytes(size) == text


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "digest"),
    [
        ("lab:w_2026_47", None, "lab", "w_2026_47", None),
        ("library/ubuntu:24.04", None, "library/ubuntu", "24.04", None),
        ("ghcr.io/labd/sciplat-lab:w_2026_47", "ghcr.io", "labd/sciplat-lab", "w_2026_47", None),
        (
            f"registry.example/lab:w_2026_47@{DIGEST_A}",
            "registry.example",
            "lab",
            "w_2026_47",
            DIGEST_A,
        ),
        (f"localhost/lab@{DIGEST_A}", "localhost", "lab", None, DIGEST_A),
        (
            "registry.example:5000/a/b__c.d-e:T_1",
            "registry.example:5000",
            "a/b__c.d-e",
            "T_1",
            None,
        ),
        ("[fd00::1]:5000/lab:1", "[fd00::1]:5000", "lab", "1", None),
    ],
)
def test_image_reference_parse(
    text: str, registry: str | None, repository: str, tag: str | None, digest: str | None
) -> None:
    ref = ImageReference.parse(text)
    assert ref == ImageReference(registry, repository, tag, digest)
    assert str(ref) == text
    assert ref.base == (f"{registry}/{repository}" if registry else repository)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "image reference is empty"),
        ("registry.example:5000/lab", "has neither tag nor digest"),
        ("Ubuntu:1", "malformed repository name 'Ubuntu' (the repository must be lowercase)"),
        ("lab:" + "x" * 129, "has a malformed tag"),
        ("lab@sha512:abc", "has a malformed digest 'sha512:abc'"),
        ("-lab:1", "malformed repository name '-lab'"),
        ("lab/:1", "malformed repository name 'lab/'"),
        ("a" * 256 + ":1", "has a name longer than 255 characters"),
    ],
)
def test_image_reference_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        ImageReference.parse(text)


def test_recommended_by_reference_without_digest() -> None:
    images = ImagesConfig(
        available=[ImageConfig(reference=f"registry.example/lab:w_2026_47@{DIGEST_A}")],
        recommended="registry.example/lab:w_2026_47",
    )
    assert recommended_of(images) is images.available[0]


def test_models_validate_directly() -> None:
    with pytest.raises(ValidationError, match=r"requests\.cpu 2\.0 exceeds limits\.cpu 1\.0"):
        SizeConfig.model_validate(
            {"limits": {"cpu": 1, "memory": "1Gi"}, "requests": {"cpu": 2, "memory": "1Gi"}}
        )
    assert LabConfig(env={"A_1": "x"}).env == {"A_1": "x"}


def test_every_key_is_documented() -> None:
    docs = DOCS.read_text()

    def keys(model: type[object], prefix: str) -> list[str]:
        fields = getattr(model, "model_fields", {})
        found = []
        for name, field in fields.items():
            found.append(prefix + name)
            annotation = field.annotation
            if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
                found.extend(keys(annotation, f"{prefix}{name}."))
        return found

    missing = [key for key in keys(Config, "") if f"`{key}`" not in docs]
    assert missing == []


# The check-config command


def test_check_config_ok() -> None:
    result = CliRunner().invoke(main, ["check-config", str(DATA / "full.yaml")], env={})
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "Configuration OK" in out
    assert "postgresql+asyncpg://labd:***@db.example:5432/labd" in out
    assert "s3cret" not in out
    assert "[::1]:9090" in out
    assert "kubeconfig /etc/labd/kubeconfig, context lab-cluster" in out
    assert "nb-<user>" in out
    assert re.search(r"tiny\s+0\.1 / 0\.5\s+256 MiB / 1 GiB\s+For reading notebooks", out)
    assert re.search(r"\*\s+registry\.example/lab:w_2026_47@sha256:\S+\s+weekly", out)
    assert "spawn 900 s, delete 120 s" in out
    assert "every 60 s" in out


def test_check_config_problems() -> None:
    result = CliRunner().invoke(check_config, [str(DATA / "requests_exceed_limits.yaml")])
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "sizes.small: requests.cpu 2.0 exceeds limits.cpu 1.0",
        "sizes.medium: requests.memory 8 GiB exceeds limits.memory 4 GiB",
    ]


def test_check_config_env_applies() -> None:
    result = CliRunner().invoke(
        check_config, [str(EXAMPLE)], env={"LABD_DATABASE_URL": "sqlite:///x.db"}
    )
    assert result.exit_code == 1
    assert result.stderr == (
        "LABD_DATABASE_URL (database_url): driver 'sqlite' is not async; use "
        "'sqlite+aiosqlite' (sqlite+aiosqlite://...)\n"
    )


def test_check_config_missing_file(tmp_path: Path) -> None:
    result = CliRunner().invoke(check_config, [str(tmp_path / "nope.yaml")])
    assert result.exit_code == 1
    assert result.stderr == f"{tmp_path / 'nope.yaml'}: no such file\n"


def test_check_config_usage_error() -> None:
    result = CliRunner().invoke(check_config, [])
    assert result.exit_code == 2
    assert "Missing argument 'FILE'" in result.stderr


# Numbers in range, and files no parser may choke on
#
# Every float setting must be finite and bounded: `1e309` (infinity) once
# passed check-config and then failed every create with a 500, when
# `now + timedelta(seconds=inf)` overflowed.  A file PyYAML cannot turn into
# Python values (a 5000-digit integer, 100,000 `[`) must be a problem naming
# the file and line, never a traceback.

DURATIONS = [
    "timeouts.spawn",
    "timeouts.delete",
    "reconcile_interval",
    "retry.initial",
    "kubernetes.request_timeout",
    "alerts.window",
]


def _nested(key: str, value: str) -> str:
    """YAML setting ``key`` (dotted) to ``value`` (YAML text)."""
    for part in reversed(key.split(".")):
        value = f"{{{part}: {value}}}"
    return value[1:-1]


def _float_settings(
    model: type[BaseModel], prefix: str = ""
) -> Iterator[tuple[str, list[object]]]:
    """Each float setting of ``model`` and below, with its constraints."""
    for name, field in model.model_fields.items():
        yield from _floats_in(field.annotation, list(field.metadata), prefix + name)


def _floats_in(
    annotation: object, metadata: list[object], key: str
) -> Iterator[tuple[str, list[object]]]:
    if get_origin(annotation) is Annotated:
        base, *extras = get_args(annotation)
        for extra in extras:
            metadata = [*metadata, *(extra.metadata if isinstance(extra, FieldInfo) else [extra])]
        yield from _floats_in(base, metadata, key)
    elif annotation is float:
        yield key, metadata
    elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield from _float_settings(annotation, key + ".")
    else:  # X | None, list[X], dict[str, X]
        for argument in get_args(annotation):
            yield from _floats_in(argument, metadata, key)


def test_every_float_setting_is_finite_and_bounded() -> None:
    settings = dict(_float_settings(Config))
    assert "timeouts.spawn" in settings
    assert "sizes.limits.cpu" in settings
    unbounded = [
        key
        for key, constraints in settings.items()
        if not any(hasattr(c, "le") or hasattr(c, "lt") for c in constraints)
    ]
    assert unbounded == [], "give these an upper bound (durations: Seconds)"
    assert Config.model_config.get("allow_inf_nan") is False
    assert TimeoutsConfig.model_config.get("allow_inf_nan") is False  # And every _Model.


def test_durations_are_finite_positive_and_at_most_a_week(tmp_path: Path) -> None:
    path = tmp_path / "labd.yaml"
    expected = {
        "1e309": "Input should be a finite number",
        "1.0e+309": "Input should be a finite number",
        ".inf": "Input should be a finite number",
        ".nan": "Input should be a finite number",
        "-1": "Input should be greater than 0",
        "1e300": f"Input should be less than or equal to {MAX_DURATION}",
        str(MAX_DURATION + 0.5): f"Input should be less than or equal to {MAX_DURATION}",
    }
    for key in DURATIONS:
        for value, message in expected.items():
            path.write_text(_nested(key, value) + "\n")
            assert problems_of(path) == [f"{key}: {message}"], value
        path.write_text(_nested(key, str(MAX_DURATION)) + "\n")
        load_config(path, environ={})
    # A week from now is far from datetime's end (year 9999).
    assert datetime.now(UTC) + timedelta(seconds=MAX_DURATION) < datetime(9000, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("1e309", "Input should be a finite number"),
        ("inf", "Input should be a finite number"),
        ("-inf", "Input should be a finite number"),
        ("NaN", "Input should be a finite number"),
        ("1e300", f"Input should be less than or equal to {MAX_DURATION}"),
    ],
)
def test_env_durations_are_finite_and_bounded(value: str, message: str) -> None:
    environ = {"LABD_TIMEOUTS__SPAWN": value, "LABD_RECONCILE_INTERVAL": value}
    assert problems_of(None, environ) == [
        f"LABD_TIMEOUTS__SPAWN (timeouts.spawn): {message}",
        f"LABD_RECONCILE_INTERVAL (reconcile_interval): {message}",
    ]


def test_lab_ids_and_grace_fit_kubernetes(tmp_path: Path) -> None:
    path = tmp_path / "labd.yaml"
    path.write_text(
        f"lab: {{uid: 2147483648, gid: {2**63 - 1}, pod_delete_grace: {MAX_DURATION + 1}}}\n"
    )
    assert problems_of(path) == [
        "lab.uid: Input should be less than or equal to 2147483647",
        "lab.gid: Input should be less than or equal to 2147483647",
        f"lab.pod_delete_grace: Input should be less than or equal to {MAX_DURATION}",
    ]


def _size(limits: str) -> str:
    return (
        f"sizes: {{s: {{limits: {limits}, requests: {{cpu: 100m, memory: 1Mi}}}}}}\n"
        "default_size: s\n"
    )


@pytest.mark.parametrize(
    ("limits", "expected"),
    [
        ("{cpu: '1e309', memory: 1Gi}", "invalid quantity '1e309': not a finite number"),
        ("{cpu: .inf, memory: 1Gi}", "invalid quantity inf: not a finite number"),
        ("{cpu: 1e300, memory: 1Gi}", f"Input should be less than or equal to {MAX_CPU}"),
        ("{cpu: 10001, memory: 1Gi}", f"Input should be less than or equal to {MAX_CPU}"),
        ("{cpu: 1, memory: 8Ei}", f"Input should be less than or equal to {MAX_BYTES}"),
        ("{cpu: 1, memory: '1e300'}", f"Input should be less than or equal to {MAX_BYTES}"),
    ],
)
def test_quantities_are_finite_and_bounded(tmp_path: Path, limits: str, expected: str) -> None:
    path = tmp_path / "labd.yaml"
    path.write_text(_size(limits))
    assert problems_of(path)[0].partition(": ")[2] == expected


def test_quantity_beyond_any_float() -> None:
    # JSON takes 4000 digits; float() of it raised OverflowError, a traceback.
    sizes = '{"s": {"limits": {"cpu": %s, "memory": 1}, "requests": {"cpu": 1, "memory": 1}}}'
    problems = problems_of(None, {"LABD_SIZES": sizes % ("9" * 4000), "LABD_DEFAULT_SIZE": "s"})
    assert problems == [
        "LABD_SIZES (sizes.s.limits.cpu): invalid quantity: a 4000-digit number",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            f"max_body_size: {'1' * 5000}",
            "line 1, column 16: integer out of range (beyond 64 bits)",
        ),
        (
            f"lab: {{uid: 0x{'f' * 20000}}}",
            "line 1, column 12: integer out of range (beyond 64 bits)",
        ),
        ("x: " + "[" * 100_000, "line 1, column 35: nested more than 32 levels deep"),
        (
            "".join(f"{' ' * depth}k:\n" for depth in range(40)) + " " * 40 + "x",
            "line 32, column 32: nested more than 32 levels deep",
        ),
        (
            "x: 2026-13-01",
            "line 1, column 4: cannot read '2026-13-01' as timestamp: month must be in 1..12",
        ),
    ],
)
def test_yaml_python_cannot_hold_is_a_problem(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "labd.yaml"
    path.write_text(text + "\n")
    assert problems_of(path) == [f"{path}: invalid YAML: {expected}"]


def test_yaml_complex_key(tmp_path: Path) -> None:
    path = tmp_path / "labd.yaml"
    path.write_text("? [log_level]\n: info\n")
    assert problems_of(path) == [
        f"{path}: YAML syntax error: line 1, column 3: a key must be a plain value, "
        "not a list or mapping"
    ]


def test_env_json_nested_too_deeply() -> None:
    assert problems_of(None, {"LABD_SIZES": "[" * 100_000}) == [
        "LABD_SIZES (sizes): not valid JSON (nested too deeply)"
    ]


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [("(" * 2000, "nested too deeply"), ("a{99999999999}", "the repetition number is too large")],
)
def test_class_pattern_too_complex(tmp_path: Path, pattern: str, reason: str) -> None:
    path = tmp_path / "labd.yaml"
    path.write_text(
        f"images: {{class_patterns: {{weekly: '{pattern}'}}, available: [{{reference: 'a:b'}}],"
        " recommended: b}\n"
    )
    assert problems_of(path) == [
        f"images.class_patterns: weekly: regular expression too complex: {reason}"
    ]


BAD_FILES = {
    "inf.yaml": ("timeouts: {spawn: 1e309}\n", "timeouts.spawn: Input should be a finite number"),
    "digits.yaml": (
        f"max_body_size: {'7' * 5000}\n",
        "invalid YAML: line 1, column 16: integer out of range (beyond 64 bits)",
    ),
    "deep.yaml": ("x: " + "[" * 100_000 + "\n", "invalid YAML: line 1, column 35: nested more"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_numbers_and_nesting_never_print_a_traceback(tmp_path: Path, name: str) -> None:
    text, expected = BAD_FILES[name]
    path = tmp_path / name
    path.write_text(text)
    env = {key: value for key, value in os.environ.items() if not key.startswith("LABD_")}
    for command, status in (["check-config", str(path)], 1), (["serve", "--config", str(path)], 2):
        done = subprocess.run(
            [sys.executable, "-m", "labd", *command],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
        assert (done.returncode, done.stdout) == (status, ""), done.stderr
        assert "Traceback" not in done.stderr
        assert expected in done.stderr
