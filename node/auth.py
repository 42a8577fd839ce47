"""Key material and API tokens: Ed25519-signed JWTs, and the cluster key for peer HMAC.

Key files (``rota keygen --dir DIR`` writes all three; a node's defaults put them
under its ``data_dir``)::

    DIR/cluster.key            32 random bytes as 64 hex digits; peer HMAC key; mode 0600
    DIR/jwt-signing.pem        Ed25519 private key (PKCS#8 PEM); mints tokens; mode 0600
    DIR/jwt-public/<kid>.pem   Ed25519 public keys (SPKI PEM); every key here verifies

A key's id (``kid``) is its RFC 7638 JWK thumbprint, derived from the key itself, so
a file's name is only a label. Rotation: add the new public key to every node's
``jwt-public``, switch the signing key, and remove the old public key once the
tokens it signed have expired.

Rules:
- Tokens: header ``alg=EdDSA`` and ``kid``; claims ``iss``, ``aud``, ``sub``, ``role``,
  ``iat``, ``exp`` all required. The verifier pins the algorithm list to
  ``["EdDSA"]`` (so ``alg=none`` and HMAC confusion are refused), picks the key by
  ``kid`` (unknown kid: refused, no fallback), and judges time with its own clock.
- Verified tokens are cached (bounded LRU, keyed by the token's SHA-256) until they
  expire: EdDSA verification costs ~0.2 ms and the same token is sent on every call.
- Tokens, keys and key bytes are never logged, and never appear in error messages.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from web.security import InvalidToken, Principal, Role, TokenVerifierPort

CLUSTER_KEY_FILE = "cluster.key"
SIGNING_KEY_FILE = "jwt-signing.pem"
PUBLIC_KEYS_DIR = "jwt-public"
CLUSTER_KEY_BYTES = 32
KEY_FILE_BYTES_MAX = 16_384
PUBLIC_KEYS_MAX = 64

ALGORITHM = "EdDSA"
ISSUER = "rota"
AUDIENCE = "rota-api"
REQUIRED_CLAIMS = ("exp", "iat", "iss", "aud", "sub")
TOKEN_BYTES_MAX = 4096
TOKEN_TTL_S_MAX = 366 * 86_400
SUBJECT_CHARS_MAX = 256
CLOCK_SKEW_S = 60  # how far in the future an ``iat`` may be
CACHE_ENTRIES_MAX = 10_000


class KeyFileError(Exception):
    """A key file is missing, unreadable, malformed, or would be overwritten."""


# ---------------------------------------------------------------- key material


def key_id(public_key: Ed25519PublicKey) -> str:
    """RFC 7638 thumbprint of the key's JWK: base64url(SHA-256(canonical JWK))."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    jwk = {"crv": "Ed25519", "kty": "OKP", "x": _b64url(raw)}
    canonical = json.dumps(jwk, sort_keys=True, separators=(",", ":")).encode()
    return _b64url(hashlib.sha256(canonical).digest())


def generate_signing_key() -> tuple[str, bytes, bytes]:
    """A fresh Ed25519 key pair: ``(kid, private_pem, public_pem)``."""
    private = Ed25519PrivateKey.generate()
    private_pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return key_id(private.public_key()), private_pem, public_pem


def generate_cluster_key() -> bytes:
    """32 random bytes for peer HMAC authentication (stored as hex)."""
    return secrets.token_bytes(CLUSTER_KEY_BYTES)


@dataclass(frozen=True, slots=True)
class KeyMaterial:
    """Where ``write_keys`` put things."""

    kid: str
    cluster_key_path: Path
    signing_key_path: Path
    public_key_path: Path


def write_keys(directory: Path, *, force: bool = False) -> KeyMaterial:
    """Generate a cluster key and a JWT key pair into ``directory`` (layout above).

    Refuses to overwrite existing files unless ``force``: replacing a cluster key
    splits a cluster, replacing a signing key invalidates every token."""
    directory.mkdir(parents=True, exist_ok=True)
    kid, private_pem, public_pem = generate_signing_key()
    paths = KeyMaterial(
        kid,
        directory / CLUSTER_KEY_FILE,
        directory / SIGNING_KEY_FILE,
        directory / PUBLIC_KEYS_DIR / f"{kid}.pem",
    )
    if not force:
        for path in (paths.cluster_key_path, paths.signing_key_path):
            if path.exists():
                raise KeyFileError(f"{path} exists; refusing to overwrite it (use --force)")
    paths.public_key_path.parent.mkdir(exist_ok=True)
    write_file(paths.cluster_key_path, (generate_cluster_key().hex() + "\n").encode(), 0o600)
    write_file(paths.signing_key_path, private_pem, 0o600)
    write_file(paths.public_key_path, public_pem, 0o644)
    return paths


def ensure_dev_secrets(directory: Path) -> KeyMaterial:
    """Create whichever key files are missing in ``directory`` and keep the others.

    Idempotent, for ``rota dev`` and ``make run``: a restarted dev cluster keeps
    its cluster key and its tokens stay valid."""
    directory.mkdir(parents=True, exist_ok=True)
    cluster_key_path = directory / CLUSTER_KEY_FILE
    if not cluster_key_path.exists():
        write_file(cluster_key_path, (generate_cluster_key().hex() + "\n").encode(), 0o600)
    signing_key_path = directory / SIGNING_KEY_FILE
    if not signing_key_path.exists():
        _, private_pem, _ = generate_signing_key()
        write_file(signing_key_path, private_pem, 0o600)
    kid, private = load_signing_key(signing_key_path)
    public_key_path = directory / PUBLIC_KEYS_DIR / f"{kid}.pem"
    if not public_key_path.exists():
        public_key_path.parent.mkdir(exist_ok=True)
        public_pem = private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        write_file(public_key_path, public_pem, 0o644)
    return KeyMaterial(kid, cluster_key_path, signing_key_path, public_key_path)


def write_file(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` durably and atomically (temp file, fsync, rename) with ``mode``."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _read_key_file(path: Path) -> bytes:
    try:
        with path.open("rb") as f:
            data = f.read(KEY_FILE_BYTES_MAX + 1)
    except OSError as e:
        raise KeyFileError(f"cannot read {path}: {e.strerror}") from None
    if len(data) > KEY_FILE_BYTES_MAX:
        raise KeyFileError(f"{path} is larger than {KEY_FILE_BYTES_MAX} bytes")
    return data


def load_cluster_key(path: Path) -> bytes:
    """Read a cluster key file (64 hex digits)."""
    text = _read_key_file(path).decode("ascii", "replace").strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != CLUSTER_KEY_BYTES:
        raise KeyFileError(f"{path} must hold {CLUSTER_KEY_BYTES * 2} hex digits")
    return key


def load_signing_key(path: Path) -> tuple[str, Ed25519PrivateKey]:
    """Read an Ed25519 private key (PKCS#8 PEM); returns ``(kid, key)``."""
    try:
        key = serialization.load_pem_private_key(_read_key_file(path), password=None)
    except (ValueError, TypeError):
        raise KeyFileError(f"{path} is not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path} is not an Ed25519 key")
    return key_id(key.public_key()), key


def load_public_keys(directory: Path) -> dict[str, Ed25519PublicKey]:
    """Read every ``*.pem`` in ``directory`` as an Ed25519 public key, by kid."""
    try:
        files = sorted(p for p in directory.iterdir() if p.suffix == ".pem")
    except OSError as e:
        raise KeyFileError(f"cannot list {directory}: {e.strerror}") from None
    if len(files) > PUBLIC_KEYS_MAX:
        raise KeyFileError(f"{directory} holds more than {PUBLIC_KEYS_MAX} keys")
    keys: dict[str, Ed25519PublicKey] = {}
    for path in files:
        try:
            key = serialization.load_pem_public_key(_read_key_file(path))
        except ValueError:
            raise KeyFileError(f"{path} is not a PEM public key") from None
        if not isinstance(key, Ed25519PublicKey):
            raise KeyFileError(f"{path} is not an Ed25519 key")
        keys[key_id(key)] = key
    return keys


# ---------------------------------------------------------------- tokens


def mint_token(
    private_key: Ed25519PrivateKey,
    kid: str,
    role: Role,
    ttl_s: int,
    sub: str,
    iss: str = ISSUER,
    aud: str = AUDIENCE,
    now: float | None = None,
) -> str:
    """Sign a token for ``sub`` with ``role``, valid ``ttl_s`` seconds from ``now``."""
    if not 1 <= ttl_s <= TOKEN_TTL_S_MAX:
        raise ValueError(f"ttl_s must be in [1, {TOKEN_TTL_S_MAX}], got {ttl_s}")
    if not 1 <= len(sub) <= SUBJECT_CHARS_MAX:
        raise ValueError(f"sub must be 1-{SUBJECT_CHARS_MAX} characters")
    issued_s = int(time.time() if now is None else now)
    claims = {
        "iss": iss,
        "aud": aud,
        "sub": sub,
        "role": role.value,
        "iat": issued_s,
        "exp": issued_s + ttl_s,
    }
    return jwt.encode(claims, private_key, algorithm=ALGORITHM, headers={"kid": kid})


def mint_token_from_files(
    keys: KeyMaterial, role: Role | str, ttl_s: int, sub: str = "rota-dev"
) -> str:
    """Mint a token with the signing key named in ``keys`` (as written by keygen)."""
    kid, private = load_signing_key(keys.signing_key_path)
    return mint_token(private, kid, Role(role), ttl_s, sub)


@dataclass(frozen=True, slots=True)
class VerifierStatistics:
    cached: int
    cache_hits_total: int
    verified_total: int
    rejected_total: int


class TokenVerifier:
    """Verifies API tokens against a fixed set of public keys (``web.security.TokenVerifierPort``).

    ``clock`` returns Unix time in seconds. A cached token stays valid until it
    expires even if its key is removed later: build a new verifier to revoke a key.
    Not thread-safe: the app uses it from the event loop only.
    """

    def __init__(
        self,
        public_keys: Mapping[str, Ed25519PublicKey],
        iss: str = ISSUER,
        aud: str = AUDIENCE,
        clock: Callable[[], float] = time.time,
        cache_entries_max: int = CACHE_ENTRIES_MAX,
    ) -> None:
        assert cache_entries_max >= 1
        self._keys = dict(public_keys)
        self._iss = iss
        self._aud = aud
        self._clock = clock
        self._cache_entries_max = cache_entries_max
        self._cache: OrderedDict[bytes, Principal] = OrderedDict()
        self._hits_total = 0
        self._verified_total = 0
        self._rejected_total = 0

    @classmethod
    def from_directory(cls, directory: Path, **kwargs: Any) -> TokenVerifier:
        """A verifier trusting every public key in ``directory``."""
        return cls(load_public_keys(directory), **kwargs)

    def verify(self, token: str) -> Principal:
        """The token's principal, or ``InvalidToken`` with a short, safe reason."""
        try:
            return self._verify(token)
        except InvalidToken:
            self._rejected_total += 1
            raise

    def statistics(self) -> VerifierStatistics:
        return VerifierStatistics(
            len(self._cache), self._hits_total, self._verified_total, self._rejected_total
        )

    def _verify(self, token: str) -> Principal:
        if len(token) > TOKEN_BYTES_MAX:
            raise InvalidToken("token too long")
        digest = hashlib.sha256(token.encode()).digest()
        now = self._clock()
        cached = self._cache.get(digest)
        if cached is not None:
            if now < cached.expires_at_s:
                self._cache.move_to_end(digest)
                self._hits_total += 1
                return cached
            del self._cache[digest]
            raise InvalidToken("token expired")
        principal = self._check_claims(self._decode(token), digest, now)
        self._verified_total += 1
        self._cache[digest] = principal
        if len(self._cache) > self._cache_entries_max:
            self._cache.popitem(last=False)
        return principal

    def _decode(self, token: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise InvalidToken("malformed token") from None
        if header.get("alg") != ALGORITHM:
            raise InvalidToken(f"algorithm not allowed (only {ALGORITHM})")
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise InvalidToken("token has no key id")
        key = self._keys.get(kid)
        if key is None:
            raise InvalidToken("unknown key id")
        try:
            return jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                audience=self._aud,
                issuer=self._iss,
                # Time is judged below with the injected clock, not PyJWT's.
                options={
                    "require": list(REQUIRED_CLAIMS),
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                },
            )
        except jwt.InvalidSignatureError:
            raise InvalidToken("bad signature") from None
        except jwt.InvalidAudienceError:
            raise InvalidToken("wrong audience") from None
        except jwt.InvalidIssuerError:
            raise InvalidToken("wrong issuer") from None
        except jwt.MissingRequiredClaimError as e:
            raise InvalidToken(f"missing claim {e.claim!r}") from None
        except jwt.InvalidTokenError:
            raise InvalidToken("invalid token") from None

    def _check_claims(self, claims: dict[str, Any], digest: bytes, now: float) -> Principal:
        exp, iat, sub, role = (claims.get(k) for k in ("exp", "iat", "sub", "role"))
        for name, value in (("exp", exp), ("iat", iat)):
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise InvalidToken(f"claim {name!r} must be a number")
        assert isinstance(exp, int | float) and isinstance(iat, int | float)
        if not isinstance(sub, str) or not 1 <= len(sub) <= SUBJECT_CHARS_MAX:
            raise InvalidToken("claim 'sub' must be a non-empty string")
        if role not in {r.value for r in Role}:
            raise InvalidToken("claim 'role' must be viewer, operator or admin")
        if now >= exp:
            raise InvalidToken("token expired")
        if iat > now + CLOCK_SKEW_S:
            raise InvalidToken("token issued in the future")
        return Principal(sub, Role(role), float(exp), digest)


if TYPE_CHECKING:

    def _is_a_token_verifier(verifier: TokenVerifier) -> TokenVerifierPort:
        return verifier  # mypy proves TokenVerifier satisfies the web layer's port


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")
