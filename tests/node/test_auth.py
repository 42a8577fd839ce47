"""Key files, token minting and verification (including the cache), cluster keys."""

from __future__ import annotations

import stat
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from node import auth
from node.auth import TokenVerifier, key_id, mint_token
from web.security import InvalidToken, Role

NOW_S = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = NOW_S

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def verifier_for(key: Ed25519PrivateKey, clock: Clock, **kwargs: object) -> TokenVerifier:
    return TokenVerifier({key_id(key.public_key()): key.public_key()}, clock=clock, **kwargs)  # type: ignore[arg-type]


def test_generated_pair_loads_and_kid_is_the_thumbprint() -> None:
    kid, private_pem, public_pem = auth.generate_signing_key()
    private = serialization.load_pem_private_key(private_pem, password=None)
    public = serialization.load_pem_public_key(public_pem)
    assert isinstance(private, Ed25519PrivateKey)
    assert key_id(private.public_key()) == kid == key_id(public)  # type: ignore[arg-type]
    assert len(kid) == 43  # base64url of a SHA-256, unpadded


def test_kid_matches_rfc7638_for_a_known_key() -> None:
    # RFC 8037 appendix A.3: the thumbprint of its example Ed25519 key.
    raw = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
    public = serialization.load_der_public_key(bytes.fromhex("302a300506032b6570032100") + raw)
    assert key_id(public) == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"  # type: ignore[arg-type]


def test_mint_then_verify_round_trip(key: Ed25519PrivateKey) -> None:
    kid = key_id(key.public_key())
    token = mint_token(key, kid, Role.OPERATOR, 600, "ci-bot", now=NOW_S)
    header = jwt.get_unverified_header(token)
    assert (header["alg"], header["kid"]) == ("EdDSA", kid)
    principal = verifier_for(key, Clock()).verify(token)
    assert (principal.subject, principal.role) == ("ci-bot", Role.OPERATOR)
    assert principal.expires_at_s == int(NOW_S) + 600
    assert token not in repr(principal)


@pytest.mark.parametrize(("ttl_s", "sub"), [(0, "x"), (auth.TOKEN_TTL_S_MAX + 1, "x"), (60, "")])
def test_mint_refuses_out_of_bounds(key: Ed25519PrivateKey, ttl_s: int, sub: str) -> None:
    with pytest.raises(ValueError):
        mint_token(key, "kid", Role.VIEWER, ttl_s, sub)


def test_cache_hits_until_expiry_then_rejects(key: Ed25519PrivateKey) -> None:
    clock = Clock()
    verifier = verifier_for(key, clock)
    token = mint_token(key, key_id(key.public_key()), Role.VIEWER, 60, "v", now=NOW_S)
    for _ in range(3):
        verifier.verify(token)
    stats = verifier.statistics()
    assert (stats.verified_total, stats.cache_hits_total, stats.cached) == (1, 2, 1)
    clock.now = NOW_S + 60
    with pytest.raises(InvalidToken, match="expired"):
        verifier.verify(token)
    assert verifier.statistics().cached == 0


def test_cache_is_bounded(key: Ed25519PrivateKey) -> None:
    verifier = verifier_for(key, Clock(), cache_entries_max=2)
    kid = key_id(key.public_key())
    for sub in ("a", "b", "c"):
        verifier.verify(mint_token(key, kid, Role.VIEWER, 60, sub, now=NOW_S))
    assert verifier.statistics().cached == 2


def test_a_new_verifier_without_the_key_rejects_its_tokens(key: Ed25519PrivateKey) -> None:
    token = mint_token(key, key_id(key.public_key()), Role.ADMIN, 60, "a", now=NOW_S)
    with pytest.raises(InvalidToken, match="unknown key id"):
        TokenVerifier({}, clock=Clock()).verify(token)


def test_iat_slightly_ahead_is_tolerated(key: Ed25519PrivateKey) -> None:
    kid = key_id(key.public_key())
    token = mint_token(key, kid, Role.ADMIN, 600, "a", now=NOW_S + auth.CLOCK_SKEW_S)
    assert verifier_for(key, Clock()).verify(token).subject == "a"


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300) | st.binary(max_size=300).map(lambda b: b.hex()))
def test_garbage_is_always_invalid_token_never_a_crash(garbage: str) -> None:
    verifier = TokenVerifier({}, clock=Clock())
    with pytest.raises(InvalidToken):
        verifier.verify(garbage)


@settings(max_examples=50, deadline=None)
@given(st.integers(min_value=0, max_value=200), st.binary(min_size=1, max_size=8))
def test_any_corruption_of_a_valid_token_is_rejected(position: int, noise: bytes) -> None:
    key = _KEY
    token = mint_token(key, key_id(key.public_key()), Role.ADMIN, 60, "a", now=NOW_S)
    i = position % len(token)
    corrupted = token[:i] + noise.hex() + token[i + 1 :]
    if corrupted == token:
        return
    with pytest.raises(InvalidToken):
        verifier_for(key, Clock()).verify(corrupted)


_KEY = Ed25519PrivateKey.generate()


# ---------------------------------------------------------------- key files


def test_write_keys_layout_and_modes(tmp_path: Path) -> None:
    keys = auth.write_keys(tmp_path / "k")
    assert keys.cluster_key_path == tmp_path / "k" / "cluster.key"
    assert keys.signing_key_path == tmp_path / "k" / "jwt-signing.pem"
    assert keys.public_key_path == tmp_path / "k" / "jwt-public" / f"{keys.kid}.pem"
    assert stat.S_IMODE(keys.cluster_key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(keys.signing_key_path.stat().st_mode) == 0o600
    assert len(auth.load_cluster_key(keys.cluster_key_path)) == 32
    kid, _ = auth.load_signing_key(keys.signing_key_path)
    assert kid == keys.kid
    assert set(auth.load_public_keys(keys.public_key_path.parent)) == {kid}
    assert not list(tmp_path.glob("k/.*.tmp"))


def test_write_keys_refuses_to_overwrite_unless_forced(tmp_path: Path) -> None:
    first = auth.write_keys(tmp_path)
    before = first.cluster_key_path.read_bytes()
    with pytest.raises(auth.KeyFileError, match="refusing to overwrite"):
        auth.write_keys(tmp_path)
    assert first.cluster_key_path.read_bytes() == before
    second = auth.write_keys(tmp_path, force=True)
    assert second.kid != first.kid and second.cluster_key_path.read_bytes() != before
    assert set(auth.load_public_keys(tmp_path / "jwt-public")) == {first.kid, second.kid}


def test_ensure_dev_secrets_is_idempotent_and_mints(tmp_path: Path) -> None:
    first = auth.ensure_dev_secrets(tmp_path)
    cluster_key = first.cluster_key_path.read_bytes()
    again = auth.ensure_dev_secrets(tmp_path)
    assert again == first and again.cluster_key_path.read_bytes() == cluster_key
    token = auth.mint_token_from_files(first, "admin", 3600)
    verifier = TokenVerifier.from_directory(tmp_path / "jwt-public")
    assert verifier.verify(token).role is Role.ADMIN


def test_ensure_dev_secrets_restores_a_missing_public_key(tmp_path: Path) -> None:
    first = auth.ensure_dev_secrets(tmp_path)
    first.public_key_path.unlink()
    assert auth.ensure_dev_secrets(tmp_path).public_key_path.exists()


@pytest.mark.parametrize("content", [b"", b"abcd", b"zz" * 32, b"00" * 31])
def test_bad_cluster_key_files_are_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "cluster.key"
    path.write_bytes(content)
    with pytest.raises(auth.KeyFileError, match="64 hex digits"):
        auth.load_cluster_key(path)


def test_bad_key_files_name_the_file(tmp_path: Path) -> None:
    (tmp_path / "x.pem").write_text("not a key")
    with pytest.raises(auth.KeyFileError, match=r"x\.pem"):
        auth.load_public_keys(tmp_path)
    with pytest.raises(auth.KeyFileError, match=r"x\.pem"):
        auth.load_signing_key(tmp_path / "x.pem")
    with pytest.raises(auth.KeyFileError, match=r"missing\.pem"):
        auth.load_signing_key(tmp_path / "missing.pem")
    with pytest.raises(auth.KeyFileError, match="cannot list"):
        auth.load_public_keys(tmp_path / "nope")


def test_cluster_keys_are_random() -> None:
    keys = {auth.generate_cluster_key() for _ in range(8)}
    assert len(keys) == 8 and all(len(k) == 32 for k in keys)
