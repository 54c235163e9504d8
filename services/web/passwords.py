"""Passwords as salted PBKDF2 hashes, so deployment config need not hold them in clear.

    python -m services.web.passwords      # asks for a password, prints its hash for
                                          # JOBLOG_ADMIN_PASSWORD_HASH or a users file line
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

ALGORITHM = "pbkdf2_sha256"
ITERATIONS = 600_000


def hash_password(password: str, *, iterations: int = ITERATIONS, salt: str | None = None) -> str:
    salt = salt or secrets.token_hex(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt.encode(), iterations)
    return f"{ALGORITHM}${iterations}${salt}${base64.b64encode(digest).decode()}"


def parse_hash(stored: str) -> tuple[int, str, bytes]:
    """(iterations, salt, digest); raises ValueError naming the expected form."""
    try:
        algorithm, iterations, salt, digest = stored.split("$")
        if algorithm != ALGORITHM or int(iterations) < 1 or not salt:
            raise ValueError
        return int(iterations), salt, base64.b64decode(digest, validate=True)
    except ValueError:
        raise ValueError(f"expected {ALGORITHM}$<iterations>$<salt>$<base64 hash>") from None


def verify_password(password: str, stored: str) -> bool:
    iterations, salt, digest = parse_hash(stored)
    candidate = hashlib.pbkdf2_hmac("sha256", password.encode(), salt.encode(), iterations)
    return hmac.compare_digest(candidate, digest)


if __name__ == "__main__":
    import getpass

    print(hash_password(getpass.getpass("Password: ")))
