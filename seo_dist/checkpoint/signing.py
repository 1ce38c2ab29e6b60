"""Signed manifests: an HMAC-SHA256 over a manifest's canonical JSON, with a key only its owners hold.

The manifest's own ``checksum`` and the per-file hashes catch bit rot and torn writes, but whoever can write
to the folder can also rewrite them. With a signing key, the manifest carries a ``signature``
(``{"algorithm": "hmac-sha256", "key_id": ..., "value": ...}``) over its content (sorted keys, the
signature itself left out), and the per-file hashes are collision resistant (``xxh3_128`` becomes
``blake3``), so that no file and no field can change without the key.

The key comes from a file (``checkpoint.signing_key_file`` or the ``SEO_DIST_SIGNING_KEY_FILE`` environment
variable) or from the ``SEO_DIST_SIGNING_KEY`` environment variable itself (for CI secrets). It never appears
in the config, the manifest, the metadata or the logs: only its ``key_id`` (a one-way fingerprint) does.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seo_dist.errors import UserError

KEY_FILE_ENV = "SEO_DIST_SIGNING_KEY_FILE"
KEY_ENV = "SEO_DIST_SIGNING_KEY"
SIGNATURE_FIELD = "signature"
CHECKSUM_FIELD = "checksum"
ALGORITHM = "hmac-sha256"
MIN_KEY_BYTES = 16
WEAK_HASHES = ("xxh3_128",)
"""Fast checksums that a person can collide on purpose: a signed manifest never lists them."""
SIGNED_DEFAULT_HASH = "blake3"


@dataclass(frozen=True)
class SigningKey:
    """The secret bytes and where they came from (for messages; the bytes are never shown)."""

    secret: bytes = field(repr=False)
    source: str

    @property
    def key_id(self) -> str:
        """A fingerprint that names the key without revealing it (first 16 hex digits of a sha256)."""
        return hashlib.sha256(b"seo_dist signing key id\0" + self.secret).hexdigest()[:16]

    def __repr__(self) -> str:
        return f"SigningKey(key_id={self.key_id}, source={self.source})"


def _checked(secret: bytes, source: str) -> SigningKey:
    secret = secret.strip()
    if len(secret) < MIN_KEY_BYTES:
        raise UserError(
            f"signing key from {source} is {len(secret)} bytes; use at least {MIN_KEY_BYTES} random bytes "
            f"(e.g. python -c 'import secrets; print(secrets.token_hex(32))' > KEYFILE)"
        )
    return SigningKey(secret, source)


def key_from_file(path: str | os.PathLike[str], source: str | None = None) -> SigningKey:
    """The key in ``path`` (surrounding whitespace ignored); :class:`UserError` when it is missing or too short."""
    where = source or str(path)
    try:
        secret = Path(path).expanduser().read_bytes()
    except FileNotFoundError:
        raise UserError(f"signing key file {where} does not exist; create it or unset it") from None
    except OSError as e:
        raise UserError(f"signing key file {where} is unreadable ({e.strerror})") from None
    return _checked(secret, where)


def load_signing_key(key_file: str | os.PathLike[str] | None = None) -> SigningKey | None:
    """The key to sign and check manifests with: ``key_file`` if given, else ``$SEO_DIST_SIGNING_KEY_FILE``,
    else ``$SEO_DIST_SIGNING_KEY``; None when none is set (manifests are then neither signed nor checked)."""
    if key_file:
        return key_from_file(key_file)
    env_file = os.environ.get(KEY_FILE_ENV)
    if env_file:
        return key_from_file(env_file, f"${KEY_FILE_ENV} ({env_file})")
    env_value = os.environ.get(KEY_ENV)
    if env_value:
        return _checked(env_value.encode(), f"${KEY_ENV}")
    return None


def signed_algorithm(algorithm: str, key: SigningKey | None) -> str:
    """The per-file hash a save uses: ``algorithm``, except that a fast checksum becomes blake3 under a key."""
    return SIGNED_DEFAULT_HASH if key is not None and algorithm in WEAK_HASHES else algorithm


def canonical_bytes(data: dict[str, Any]) -> bytes:
    """The signed content: the manifest's JSON with sorted keys, without its signature and checksum."""
    body = {k: v for k, v in data.items() if k not in (SIGNATURE_FIELD, CHECKSUM_FIELD)}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), default=str, allow_nan=False).encode()


def _mac(key: SigningKey, data: dict[str, Any]) -> str:
    return hmac.new(key.secret, canonical_bytes(data), hashlib.sha256).hexdigest()


def sign(data: dict[str, Any], key: SigningKey) -> dict[str, str]:
    """The ``signature`` entry for a manifest's dict."""
    return {"algorithm": ALGORITHM, "key_id": key.key_id, "value": _mac(key, data)}


class SignatureError(Exception):
    """A manifest's signature is missing, wrong, or made with another key; ``kind`` is ``unsigned``,
    ``signature mismatch`` or ``other key``."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind


def check_signature(data: dict[str, Any], key: SigningKey, *, allow_unsigned: bool = False) -> bool:
    """Check a parsed manifest against ``key``; True if it is signed (and the signature holds), False if it is
    unsigned and ``allow_unsigned``. Raises :class:`SignatureError` otherwise."""
    sig = data.get(SIGNATURE_FIELD)
    if sig is None:
        if allow_unsigned:
            return False
        raise SignatureError(
            "unsigned",
            "the manifest carries no signature and a signing key is set "
            "(checkpoint.allow_unsigned=true loads unsigned checkpoints)",
        )
    if not isinstance(sig, dict) or sig.get("algorithm") != ALGORITHM or not isinstance(sig.get("value"), str):
        raise SignatureError("signature mismatch", "the manifest's signature field is malformed")
    if sig.get("key_id") != key.key_id:
        raise SignatureError(
            "signature mismatch",
            f"signed with another key (key id {sig.get('key_id')!r}, this key is {key.key_id!r})",
        )
    if not hmac.compare_digest(sig["value"], _mac(key, data)):
        raise SignatureError("signature mismatch", "the manifest was changed after it was signed")
    if data.get("hash_algorithm") in WEAK_HASHES:
        raise SignatureError(
            "signature mismatch", f"signed manifest lists {data.get('hash_algorithm')} hashes, which can be forged"
        )
    return True
