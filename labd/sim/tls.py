"""TLS for the simulated API server: a generated CA and a serving certificate.

Kubernetes clients expect an API server on HTTPS whose certificate they can
verify: kubectl and client-go send a bearer token only over TLS, and a
kubeconfig names the cluster's CA (``certificate-authority-data``). So the
sim makes, at each start, a CA of its own and a certificate for
``127.0.0.1`` and ``localhost`` signed by it, as ``kubeadm`` does for a real
control plane, and its kubeconfig carries the CA's certificate.

Key material never reaches a file that outlives the call that needs it:

- the CA's private key only signs the serving certificate, then is dropped,
  so nothing can sign another certificate this CA vouches for;
- the serving key is kept in memory and loaded into the server's
  `ssl.SSLContext` through an anonymous memory file (``memfd_create``); where
  that is unavailable, through a 0600 file in a 0700 temporary directory,
  removed as soon as it is read.

Only certificates (public) are written out: into the kubeconfig, and into a
file for clients that take a CA path (kubernetes-asyncio).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["SERVING_HOSTS", "ServingCertificate", "generate"]

SERVING_HOSTS: tuple[str, ...] = ("127.0.0.1", "localhost")
"""The names the serving certificate is valid for: the sim listens on 127.0.0.1."""

_VALIDITY = datetime.timedelta(days=365)
_BACKDATE = datetime.timedelta(hours=1)  # Tolerates a client whose clock is a little behind.


@dataclass(frozen=True)
class ServingCertificate:
    """A CA's certificate and a serving certificate it signed, with the latter's key.

    The private key is left out of ``repr``, so a log line or a traceback
    that shows this object does not show the key.
    """

    ca_pem: bytes
    """The CA's certificate, PEM: what clients trust."""

    cert_pem: bytes
    """The serving certificate, PEM."""

    key_pem: bytes = field(repr=False)
    """The serving certificate's private key, PEM (PKCS#8, unencrypted): keep it in memory."""

    def server_context(self) -> ssl.SSLContext:
        """Return a server-side context that presents the serving certificate."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        _load_chain(context, self.cert_pem + self.key_pem)
        return context

    def client_context(self) -> ssl.SSLContext:
        """Return a client-side context that trusts this CA (and checks the host name)."""
        return ssl.create_default_context(cadata=self.ca_pem.decode("ascii"))


def generate(hosts: Sequence[str] = SERVING_HOSTS) -> ServingCertificate:
    """Make a new CA and a serving certificate for ``hosts`` signed by it.

    Parameters
    ----------
    hosts
        IP addresses and DNS names the serving certificate is valid for
        (its subject alternative names; clients check those, not the common
        name).

    Returns
    -------
    ServingCertificate
        The CA's certificate, the serving certificate and its key; the CA's
        key is not kept.
    """
    now = datetime.datetime.now(datetime.UTC)
    not_before, not_after = now - _BACKDATE, now + _VALIDITY
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "labd-sim-ca")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "labd-sim-apiserver")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return ServingCertificate(
        ca_pem=ca.public_bytes(serialization.Encoding.PEM),
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
        key_pem=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


def _load_chain(context: ssl.SSLContext, pem: bytes) -> None:
    """Load a certificate and its key (one PEM) into ``context`` without a lasting file.

    `ssl.SSLContext.load_cert_chain` reads only files: give it an anonymous
    memory file, or else a private temporary file removed right after.
    """
    if hasattr(os, "memfd_create") and Path("/proc/self/fd").is_dir():
        descriptor = os.memfd_create("labd-sim-tls", os.MFD_CLOEXEC)
        try:
            _write_all(descriptor, pem)
            context.load_cert_chain(f"/proc/self/fd/{descriptor}")
        finally:
            os.close(descriptor)
        return
    with tempfile.TemporaryDirectory(prefix="labd-sim-tls-") as directory:  # mode 0700
        path = Path(directory) / "serving.pem"
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            _write_all(descriptor, pem)
        finally:
            os.close(descriptor)
        try:
            context.load_cert_chain(path)
        finally:
            path.unlink()


def _write_all(descriptor: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(descriptor, view) :]
