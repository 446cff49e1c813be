"""A real distribution registry (Debian's ``docker-registry``) for tests.

`LocalRegistry` runs ``/usr/bin/docker-registry serve`` on 127.0.0.1 with a
free port and filesystem storage in the test's directory, optionally behind
htpasswd or token authentication. Images are pushed through the registry's
HTTP API exactly as a client pushes them: a config blob and a layer blob are
uploaded, then a manifest is PUT under a tag; deleting is a DELETE of the
manifest by digest (``storage.delete.enabled``), which removes its tags.

`TokenServer` is the other half of the distribution token-auth flow: it
checks basic credentials and hands out JWTs signed with a key whose
self-signed certificate the registry trusts (``rootcertbundle``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import bcrypt
import httpx
import yaml
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from tests.support.processes import free_port

__all__ = ["REGISTRY_BINARY", "LocalRegistry", "TokenServer"]

REGISTRY_BINARY = Path("/usr/bin/docker-registry")
REPOSITORY = "sciplat/lab"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


class LocalRegistry:
    """One ``docker-registry`` process and a client that pushes to it.

    Parameters
    ----------
    root
        Directory for the configuration, the storage and the log.
    users
        Username to password for htpasswd auth; `None` for none.
    token
        Token-auth settings (``realm``, ``service``, ``issuer``,
        ``rootcertbundle``); `None` for none.
    """

    def __init__(
        self,
        root: Path,
        *,
        users: dict[str, str] | None = None,
        token: dict[str, str] | None = None,
    ) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.log = root / "registry.log"
        self._config = root / "config.yml"
        self._config.write_text(yaml.safe_dump(self._settings(users, token)))
        self._process: subprocess.Popen[bytes] | None = None
        self.push_headers: dict[str, str] = {}
        """Headers the pushing client sends (credentials of an auth test)."""

    @property
    def url(self) -> str:
        """The registry's root URL."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def image_base(self) -> str:
        """How labd names the test repository's images."""
        return f"127.0.0.1:{self.port}/{REPOSITORY}"

    def _settings(
        self, users: dict[str, str] | None, token: dict[str, str] | None
    ) -> dict[str, Any]:
        settings: dict[str, Any] = {
            "version": 0.1,
            "log": {"level": "warn", "accesslog": {"disabled": True}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.root / "data")},
                "delete": {"enabled": True},
            },
            "http": {"addr": f"127.0.0.1:{self.port}", "secret": "labd-test"},
        }
        if users is not None:
            htpasswd = self.root / "htpasswd"
            htpasswd.write_text(
                "".join(
                    f"{user}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode()}\n"
                    for user, password in users.items()
                )
            )
            settings["auth"] = {"htpasswd": {"realm": "labd-test", "path": str(htpasswd)}}
        if token is not None:
            settings["auth"] = {"token": token}
        return settings

    def start(self) -> None:
        """Start the registry and wait until it answers ``/v2/``."""
        with self.log.open("ab") as log:
            self._process = subprocess.Popen(
                [str(REGISTRY_BINARY), "serve", str(self._config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + 20
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"docker-registry exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/v2/", timeout=1).status_code in (200, 401):
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("docker-registry did not start within 20 s")
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop the registry (its storage stays, so `start` brings it back)."""
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None

    async def push(self, tag: str, *, content: str | None = None) -> str:
        """Push a small image under ``tag``; return its manifest digest.

        Parameters
        ----------
        tag
            The tag to PUT the manifest under.
        content
            What makes the image distinct (default: the tag); the same
            content gives the same digest, which is how alias tags are made.
        """
        content = tag if content is None else content
        config = json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "config": {"Labels": {"labd.test": content}},
                "rootfs": {"type": "layers", "diff_ids": []},
            }
        ).encode()
        layer = f"layer of {content}".encode()
        async with self._client() as client:
            config_digest = await _upload(client, config)
            layer_digest = await _upload(client, layer)
            manifest = {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": config_digest,
                    "size": len(config),
                },
                "layers": [
                    {
                        "mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": layer_digest,
                        "size": len(layer),
                    }
                ],
            }
            response = await client.put(
                f"/v2/{REPOSITORY}/manifests/{tag}",
                content=json.dumps(manifest).encode(),
                headers={"Content-Type": OCI_MANIFEST},
            )
            response.raise_for_status()
            digest: str = response.headers["Docker-Content-Digest"]
            return digest

    async def delete(self, digest: str) -> None:
        """Delete a manifest, and so every tag pointing at it."""
        async with self._client() as client:
            response = await client.delete(f"/v2/{REPOSITORY}/manifests/{digest}")
            assert response.status_code == 202, response.text

    def _client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, headers=self.push_headers, timeout=10)


async def _upload(client: httpx.AsyncClient, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    started = await client.post(f"/v2/{REPOSITORY}/blobs/uploads/")
    assert started.status_code == 202, started.text
    location = httpx.URL(started.headers["Location"])
    response = await client.put(
        str(location.copy_merge_params({"digest": digest})),
        content=data,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert response.status_code == 201, response.text
    return digest


class TokenServer:
    """A token server of the distribution token-auth flow, on 127.0.0.1.

    Parameters
    ----------
    root
        Where the signing certificate (the registry's ``rootcertbundle``)
        is written.
    users
        Username to password; requests with other credentials, or none,
        get 401.
    """

    service = "labd-test-registry"
    issuer = "labd-test-token-server"

    def __init__(self, root: Path, users: dict[str, str]) -> None:
        self.users = users
        self.port = free_port()
        self.requests: list[dict[str, str]] = []
        """Query parameters of each token request, for assertions."""
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "labd test tokens")])
        now = time.time()
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(datetime.fromtimestamp(now - 3600, tz=UTC))
            .not_valid_after(datetime.fromtimestamp(now + 86400, tz=UTC))
            .sign(self._key, hashes.SHA256())
        )
        self.certificate = root / "token-cert.pem"
        self.certificate.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))
        self._runner: web.AppRunner | None = None

    @property
    def realm(self) -> str:
        """The token endpoint's URL."""
        return f"http://127.0.0.1:{self.port}/token"

    def registry_settings(self) -> dict[str, str]:
        """The registry's ``auth.token`` section."""
        return {
            "realm": self.realm,
            "service": self.service,
            "issuer": self.issuer,
            "rootcertbundle": str(self.certificate),
        }

    async def start(self) -> None:
        """Serve tokens."""
        app = web.Application()
        app.router.add_get("/token", self._token)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        """Stop serving."""
        if self._runner is not None:
            await self._runner.cleanup()

    def token(self, subject: str, scope: str) -> str:
        """A signed JWT granting ``scope`` (``repository:<name>:<actions>``)."""
        _, name, actions = scope.split(":")
        now = int(time.time())
        header = {
            "typ": "JWT",
            "alg": "RS256",
            "x5c": [
                base64.b64encode(self._cert.public_bytes(serialization.Encoding.DER)).decode()
            ],
        }
        claims = {
            "iss": self.issuer,
            "sub": subject,
            "aud": self.service,
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": [{"type": "repository", "name": name, "actions": actions.split(",")}],
        }
        signing_input = f"{_b64url(header)}.{_b64url(claims)}".encode()
        signature = self._key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input.decode()}.{_b64url_bytes(signature)}"

    async def _token(self, request: web.Request) -> web.Response:
        self.requests.append(dict(request.query))
        login = request.headers.get("Authorization", "")
        user = None
        if login.startswith("Basic "):
            name, _, password = base64.b64decode(login[6:]).decode().partition(":")
            if self.users.get(name) == password:
                user = name
        if user is None or request.query.get("service") != self.service:
            return web.json_response({"details": "unauthorized"}, status=401)
        token = self.token(user, request.query.get("scope", f"repository:{REPOSITORY}:pull"))
        return web.json_response({"token": token, "expires_in": 300})


def _b64url(data: dict[str, Any]) -> str:
    return _b64url_bytes(json.dumps(data, separators=(",", ":")).encode())


def _b64url_bytes(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
