"""Password verifiers computed on hasup's side, so that a role's password never reaches PostgreSQL.

`ALTER ROLE ... PASSWORD 'secret'` puts the secret in the statement text, where statement logging,
error reports and pg_stat_statements can keep it. PostgreSQL stores a string that already has the
form of a verifier as it is, so sending the verifier instead sets the same password while the
server (and anything that records statements) only ever sees the hash.

The SCRAM-SHA-256 verifier (RFC 5802, RFC 7677) is what PostgreSQL's own `password_encryption =
scram-sha-256` computes: SASLprep the password the way PostgreSQL does, PBKDF2-HMAC-SHA-256 it with
a random salt, and store the salt, the iteration count, StoredKey and ServerKey.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import stringprep
import unicodedata

SCRAM_ITERATIONS = 4096  # PostgreSQL's default (scram_iterations, settable since 16)
SALT_BYTES = 16  # as PostgreSQL's SCRAM_DEFAULT_SALT_LEN
# PostgreSQL refuses to SASLprep longer passwords ("password too long"), so it could not log in
# with such a password either; the caller then lets the server decide, as before.
MAX_PASSWORD_BYTES = 1024

_SCRAM_VERIFIER = re.compile(r"SCRAM-SHA-256\$\d+:[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+:[A-Za-z0-9+/=]+")
_MD5_VERIFIER = re.compile(r"md5[0-9a-f]{32}")


def looks_hashed(password: str) -> bool:
    """Whether PostgreSQL would take `password` as an already computed verifier and store it as is
    (a configuration may give one on purpose, e.g. for bootstrap.users)."""
    return bool(_SCRAM_VERIFIER.fullmatch(password) or _MD5_VERIFIER.fullmatch(password))


def _prohibited(char: str) -> bool:
    # RFC 4013 section 2.3: the stringprep tables C.1.2 to C.9, plus A.1 (unassigned in Unicode 3.2).
    return (stringprep.in_table_c12(char) or stringprep.in_table_c21_c22(char) or stringprep.in_table_c3(char)
            or stringprep.in_table_c4(char) or stringprep.in_table_c5(char) or stringprep.in_table_c6(char)
            or stringprep.in_table_c7(char) or stringprep.in_table_c8(char) or stringprep.in_table_c9(char)
            or stringprep.in_table_a1(char))


def saslprep(password: str) -> bytes:
    """The bytes PostgreSQL hashes for `password`: SASLprep'd when that succeeds, else the UTF-8 as is.

    Mirrors PostgreSQL's behaviour rather than the RFC's letter: ASCII passes untouched; otherwise
    map (non-ASCII spaces to a space, "commonly mapped to nothing" removed), and if the mapped text
    is empty, holds a prohibited or unassigned character, or breaks the bidirectional rule, the
    original bytes are used; else the NFKC form of the mapped text. PostgreSQL checks the mapped
    text, not the normalized one; so does this.
    """
    raw = password.encode("utf-8")
    if password.isascii():
        return raw
    mapped = [" " if stringprep.in_table_c12(c) else c for c in password if not stringprep.in_table_b1(c)]
    if not mapped or any(_prohibited(c) for c in mapped):
        return raw
    if any(stringprep.in_table_d1(c) for c in mapped):
        if any(stringprep.in_table_d2(c) for c in mapped):
            return raw
        if not (stringprep.in_table_d1(mapped[0]) and stringprep.in_table_d1(mapped[-1])):
            return raw
    return unicodedata.normalize("NFKC", "".join(mapped)).encode("utf-8")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def scram_sha_256(password: str, salt: bytes | None = None, iterations: int = SCRAM_ITERATIONS) -> str:
    """`SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`, each part base64.

    `salt` is for tests with known vectors; by default 16 random bytes. Raises ValueError for a
    password PostgreSQL could not take either (over MAX_PASSWORD_BYTES).
    """
    if len(password.encode("utf-8")) > MAX_PASSWORD_BYTES:
        raise ValueError(f"password longer than {MAX_PASSWORD_BYTES} bytes")
    prepared = saslprep(password)
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    salted = hashlib.pbkdf2_hmac("sha256", prepared, salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    return f"SCRAM-SHA-256${iterations}:{_b64(salt)}${_b64(stored_key)}:{_b64(server_key)}"


def md5_verifier(password: str, username: str) -> str:
    """PostgreSQL's md5 password hash, for a server whose password_encryption is md5."""
    digest = hashlib.md5(password.encode("utf-8") + username.encode("utf-8"), usedforsecurity=False)
    return "md5" + digest.hexdigest()


def verifier(password: str, username: str, encryption: str) -> str:
    """What to send as the role's PASSWORD so the server stores what it would have computed itself
    under its `password_encryption` setting (`md5` or `scram-sha-256`); a password that already is
    a verifier is passed on unchanged, as PostgreSQL would store it."""
    if looks_hashed(password):
        return password
    if encryption.strip().lower() in ("md5", "on"):  # "on" meant md5 before PostgreSQL 14
        return md5_verifier(password, username)
    return scram_sha_256(password)
