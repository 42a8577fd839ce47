"""TLS material for peer connections: a cluster CA, node certificates, and the id in a cert.

``rota tls ca create`` and ``rota tls cert create`` call ``create_ca`` and
``issue_node_certificate``, then ``PemPair.write``. ``TlsAuthenticator``
(``node/peerauth.py``) reads the files back and takes a peer's node id from its
certificate with ``node_id_from_certificate``.

Rules:
- Keys are ECDSA P-256 (default: every TLS stack speaks it) or Ed25519.
- A node certificate names its node id twice: as the subject's single common name
  and as a DNS subject-alternative name. ``node_id_from_certificate`` requires both
  to agree, so one certificate can never speak for two nodes.
- Node certificates are leaves (``CA:FALSE``) valid for both TLS server and client
  authentication: every node dials and is dialled. The CA may sign leaves only
  (``pathlen:0``).
- Validity starts ``CLOCK_SKEW_S`` in the past so that a peer whose clock is a little
  behind accepts a certificate issued a moment ago.
- Private keys are written with mode 0600, atomically, never over an existing file
  unless asked; they are never logged.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from node.auth import write_file
from web.port import NODE_ID_DESCRIPTION, is_node_id

KeyType = Literal["p256", "ed25519"]
PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey

CA_NAME_DEFAULT: Final = "rota cluster CA"
CA_VALID_DAYS_DEFAULT: Final = 3650
NODE_VALID_DAYS_DEFAULT: Final = 825
VALID_DAYS_MAX: Final = 36_500
CLOCK_SKEW_S: Final = 300
PEM_FILE_BYTES_MAX: Final = 64 << 10


class TlsMaterialError(ValueError):
    """A certificate or key that cannot be used (unreadable, wrong kind, no node id)."""


@dataclass(frozen=True, slots=True)
class PemPair:
    """A certificate and its private key, both PEM-encoded."""

    cert_pem: bytes
    key_pem: bytes

    def write(self, cert_path: Path, key_path: Path, *, overwrite: bool = False) -> None:
        """Write the certificate (mode 0644) and the key (mode 0600) atomically.

        Refuses to replace an existing file unless ``overwrite``: replacing a CA key
        orphans every certificate it signed."""
        if not overwrite:
            for path in (cert_path, key_path):
                if path.exists():
                    raise FileExistsError(f"{path} exists; refusing to overwrite it")
        for path in (cert_path, key_path):
            path.parent.mkdir(parents=True, exist_ok=True)
        write_file(key_path, self.key_pem, 0o600)
        write_file(cert_path, self.cert_pem, 0o644)

    @classmethod
    def read(cls, cert_path: Path, key_path: Path) -> PemPair:
        """Read a pair back and check that the key belongs to the certificate."""
        pair = cls(_read(cert_path), _read(key_path))
        cert, key = pair.certificate(), pair.private_key()
        if _public_bytes(cert.public_key()) != _public_bytes(key.public_key()):
            raise TlsMaterialError(f"{key_path} is not the key of {cert_path}")
        return pair

    def certificate(self) -> x509.Certificate:
        return load_certificate(self.cert_pem)

    def private_key(self) -> PrivateKey:
        try:
            key = serialization.load_pem_private_key(self.key_pem, password=None)
        except (ValueError, TypeError):
            raise TlsMaterialError("not an unencrypted PEM private key") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
            raise TlsMaterialError(f"unsupported key type {type(key).__name__}")
        return key


def create_ca(
    name: str = CA_NAME_DEFAULT,
    *,
    key_type: KeyType = "p256",
    valid_days: int = CA_VALID_DAYS_DEFAULT,
    now: datetime.datetime | None = None,
) -> PemPair:
    """A new self-signed cluster CA that may sign node certificates only."""
    key = _new_key(key_type)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    builder = (
        _validity(x509.CertificateBuilder(), valid_days, now)
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(ski, critical=False)
    )
    return PemPair(_sign(builder, key), _key_pem(key))


def issue_node_certificate(
    ca: PemPair,
    node_id: str,
    *,
    key_type: KeyType = "p256",
    valid_days: int = NODE_VALID_DAYS_DEFAULT,
    now: datetime.datetime | None = None,
) -> PemPair:
    """A new key and a certificate for ``node_id``, signed by ``ca``."""
    if not is_node_id(node_id):
        raise TlsMaterialError(f"node id {node_id!r}: {NODE_ID_DESCRIPTION}")
    ca_cert, ca_key = ca.certificate(), ca.private_key()
    key = _new_key(key_type)
    builder = (
        _validity(x509.CertificateBuilder(), valid_days, now)
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node_id)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(node_id)]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    return PemPair(_sign(builder, ca_key), _key_pem(key))


def node_id_from_certificate(cert: x509.Certificate) -> str:
    """The node id a certificate speaks for (see the rules), or ``TlsMaterialError``."""
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(cns) != 1:
        raise TlsMaterialError(f"certificate has {len(cns)} common names, expected 1")
    cn = cns[0].value
    if not isinstance(cn, str) or not is_node_id(cn):
        raise TlsMaterialError("certificate common name is not a node id")
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise TlsMaterialError("certificate has no subject alternative names") from None
    if san.get_values_for_type(x509.DNSName) != [cn]:
        raise TlsMaterialError("certificate DNS names do not match its common name")
    return cn


def load_certificate(pem: bytes) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError:
        raise TlsMaterialError("not a PEM certificate") from None


# ------------------------------------------------------------------------ helpers


def _new_key(key_type: KeyType) -> PrivateKey:
    match key_type:
        case "p256":
            return ec.generate_private_key(ec.SECP256R1())
        case "ed25519":
            return ed25519.Ed25519PrivateKey.generate()


def _validity(
    builder: x509.CertificateBuilder, valid_days: int, now: datetime.datetime | None
) -> x509.CertificateBuilder:
    if not 1 <= valid_days <= VALID_DAYS_MAX:
        raise TlsMaterialError(f"valid_days must be in [1, {VALID_DAYS_MAX}], got {valid_days}")
    start = (now or datetime.datetime.now(datetime.UTC)) - datetime.timedelta(seconds=CLOCK_SKEW_S)
    return (
        builder.serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=valid_days))
    )


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _sign(builder: x509.CertificateBuilder, key: PrivateKey) -> bytes:
    # Ed25519 signs without a separate digest; ECDSA uses SHA-256.
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm).public_bytes(serialization.Encoding.PEM)


def _key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _public_bytes(key: object) -> bytes:
    if not isinstance(key, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey):
        raise TlsMaterialError(f"unsupported public key type {type(key).__name__}")
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _read(path: Path) -> bytes:
    try:
        with path.open("rb") as f:
            data = f.read(PEM_FILE_BYTES_MAX + 1)
    except OSError as e:
        raise TlsMaterialError(f"cannot read {path}: {e.strerror}") from None
    if len(data) > PEM_FILE_BYTES_MAX:
        raise TlsMaterialError(f"{path} is larger than {PEM_FILE_BYTES_MAX} bytes")
    return data
