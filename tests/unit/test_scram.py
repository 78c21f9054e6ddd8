"""Password verifiers computed by hasup: SCRAM-SHA-256 against RFC 7677's vector, SASLprep as
PostgreSQL applies it, md5, and role statements that never carry the password.

That PostgreSQL accepts these verifiers (a role created with one logs in with the password) is
proven against a real server in tests/integration/test_secrets.py.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

import pytest

from hasup.postgresql.roles import QUIET_SETTINGS, Role, role_statements
from hasup.postgresql.scram import looks_hashed, md5_verifier, saslprep, scram_sha_256, verifier

# RFC 7677 section 3: user "user", password "pencil", and the exchange's messages.
RFC_SALT = "W22ZaJ0SNY7soEsUEjb6gQ=="
RFC_NONCE = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
RFC_AUTH_MESSAGE = (f"n=user,r=rOprNGfwEbeRWgbNEkqO,r={RFC_NONCE},s={RFC_SALT},i=4096,c=biws,r={RFC_NONCE}").encode()
RFC_CLIENT_PROOF = "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
RFC_SERVER_SIGNATURE = "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
VERIFIER = re.compile(r"SCRAM-SHA-256\$4096:(?P<salt>[^$]+)\$(?P<stored>[^:]+):(?P<server>.+)")


def keys(secret: str) -> tuple[bytes, bytes, bytes]:
    m = VERIFIER.fullmatch(secret)
    assert m is not None, secret
    return tuple(base64.b64decode(m[part]) for part in ("salt", "stored", "server"))  # type: ignore[return-value]


def test_the_verifier_accepts_rfc_7677s_exchange_as_a_server_would() -> None:
    salt, stored_key, server_key = keys(scram_sha_256("pencil", salt=base64.b64decode(RFC_SALT)))
    assert base64.b64encode(salt).decode() == RFC_SALT
    # The server's check of the client's proof: ClientKey = proof XOR HMAC(StoredKey, AuthMessage).
    signature = hmac.new(stored_key, RFC_AUTH_MESSAGE, hashlib.sha256).digest()
    client_key = bytes(a ^ b for a, b in zip(base64.b64decode(RFC_CLIENT_PROOF), signature, strict=True))
    assert hashlib.sha256(client_key).digest() == stored_key
    # And what it proves itself with.
    proof = hmac.new(server_key, RFC_AUTH_MESSAGE, hashlib.sha256).digest()
    assert base64.b64encode(proof).decode() == RFC_SERVER_SIGNATURE


def test_each_verifier_has_a_fresh_random_salt() -> None:
    first, second = scram_sha_256("same"), scram_sha_256("same")
    assert first != second and len(keys(first)[0]) == 16
    assert "same" not in first


@pytest.mark.parametrize(("password", "prepared"), [
    ("user", b"user"),  # ASCII is taken as it is, control characters included (PostgreSQL's shortcut)
    ("tab\there", b"tab\there"),
    ("I\u00adX", b"IX"),  # soft hyphen: mapped to nothing
    ("a\u00a0b", b"a b"),  # a non-ASCII space becomes a space
    ("\u00aa", b"a"),  # NFKC
    ("\u2168", b"IX"),
    ("p\u00e4ssw\u00f6rd", "p\u00e4ssw\u00f6rd".encode()),
    ("x\u0007\u00e9", "x\u0007\u00e9".encode()),  # prohibited (a control character): the original bytes
    ("\u0627\u0031", "\u0627\u0031".encode()),  # a right-to-left string that does not end right-to-left
    ("\u200b", "\u200b".encode()),  # nothing left after mapping: the original bytes
    ("\U000e0001x", "\U000e0001x".encode()),  # a tagging character
])
def test_saslprep_as_postgresql_applies_it(password: str, prepared: bytes) -> None:
    assert saslprep(password) == prepared


def test_md5_and_the_choice_by_password_encryption() -> None:
    assert md5_verifier("secret", "alice") == "md5" + hashlib.md5(b"secretalice").hexdigest()
    assert verifier("secret", "alice", "md5") == md5_verifier("secret", "alice")
    assert verifier("secret", "alice", "scram-sha-256").startswith("SCRAM-SHA-256$4096:")


def test_a_given_verifier_is_passed_on_as_postgresql_would_store_it() -> None:
    given = scram_sha_256("x")
    assert looks_hashed(given) and verifier(given, "alice", "scram-sha-256") == given
    md5 = md5_verifier("x", "alice")
    assert looks_hashed(md5) and verifier(md5, "alice", "scram-sha-256") == md5
    assert not looks_hashed("md5-but-not-a-hash") and not looks_hashed("SCRAM-SHA-256$x")


def test_a_password_postgresql_could_not_take_is_refused() -> None:
    with pytest.raises(ValueError, match="longer than 1024 bytes"):
        scram_sha_256("x" * 1025)


def test_role_statements_carry_the_verifier_never_the_password() -> None:
    statements = role_statements(Role("app'\"user", "s3cr'et", ("CREATEDB",)), "scram-sha-256")
    assert not any("s3cr" in s for s in statements)
    assert statements[1].startswith('ALTER ROLE "app\'""user" WITH LOGIN CREATEDB PASSWORD \'SCRAM-SHA-256$4096:')
    assert role_statements(Role("plain"), "md5")[1] == 'ALTER ROLE "plain" WITH LOGIN'
    assert "s3cr" not in repr(Role("x", "s3cr'et"))


def test_the_quiet_settings_cover_every_kind_of_statement_logging() -> None:
    names = dict(QUIET_SETTINGS)
    assert names["log_statement"] == "none" and names["log_min_duration_statement"] == "-1"
    assert names["log_min_error_statement"] == "panic"
