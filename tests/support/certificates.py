"""A throwaway PKI for TLS tests, generated per test: a CA, a server certificate for localhost and
127.0.0.1, a client certificate from that CA, and one from a CA the services do not trust."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = datetime.timedelta(days=1)
# Clocks of the test machine and the certificate's notBefore may differ slightly.
CLOCK_SKEW = datetime.timedelta(minutes=5)


@dataclass(frozen=True)
class Authority:
    name: str
    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate


@dataclass(frozen=True)
class CertificateFiles:
    """A certificate and its private key, as PEM files."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class Certificates:
    ca: Path
    server: CertificateFiles
    client: CertificateFiles
    foreign_client: CertificateFiles


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _validity(builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return builder.not_valid_before(now - CLOCK_SKEW).not_valid_after(now + VALIDITY)


def new_authority(name: str) -> Authority:
    """A self-signed CA that may sign leaf certificates only."""
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(_name(name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    return Authority(name, key, _validity(builder).sign(key, hashes.SHA256()))


def issue(
    authority: Authority,
    common_name: str,
    usages: list[x509.ObjectIdentifier],
    dns_names: tuple[str, ...] = (),
    ip_addresses: tuple[str, ...] = (),
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A leaf certificate signed by `authority`, for the given extended key usages and names."""
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(authority.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(authority.key.public_key()), critical=False)
    )
    names: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
    names += [x509.IPAddress(ipaddress.ip_address(address)) for address in ip_addresses]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return key, _validity(builder).sign(authority.key, hashes.SHA256())


def write_certificate(path: Path, certificate: x509.Certificate) -> Path:
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return path


def write_pair(
    directory: Path, name: str, key: ec.EllipticCurvePrivateKey, certificate: x509.Certificate
) -> CertificateFiles:
    key_path = directory / f"{name}.key"
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_path.chmod(0o600)
    return CertificateFiles(cert=write_certificate(directory / f"{name}.crt", certificate), key=key_path)


def create_pki(directory: Path) -> Certificates:
    """Writes the CA, server and client files into `directory`. The server certificate may also act as
    a client (serverAuth and clientAuth), as the orchestrator presents it to a registry requiring mutual TLS."""
    directory.mkdir(parents=True, exist_ok=True)
    authority = new_authority("arbiter test CA")
    stranger = new_authority("some other CA")
    server = issue(
        authority,
        "arbiter services",
        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        dns_names=("localhost",),
        ip_addresses=("127.0.0.1",),
    )
    client = issue(authority, "test client", [ExtendedKeyUsageOID.CLIENT_AUTH])
    foreign_client = issue(stranger, "foreign client", [ExtendedKeyUsageOID.CLIENT_AUTH])
    return Certificates(
        ca=write_certificate(directory / "ca.crt", authority.certificate),
        server=write_pair(directory, "server", *server),
        client=write_pair(directory, "client", *client),
        foreign_client=write_pair(directory, "foreign-client", *foreign_client),
    )
