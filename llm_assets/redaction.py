"""Masking secrets and personal data in text the library logs or stores as metadata.

API keys are always masked in error messages (a misbehaving server may echo the key it
was sent). With ``OpenAIResource(redact_text=True)``, e-mail addresses, phone numbers and
key-like strings are also masked in the prompt and answer previews the library records.

Examples:
    >>> redact("mail ana@example.org or call +1 415 555 0100, key sk-proj-abcdefghijklmnop1234")
    'mail [email] or call [phone], key [secret]'
"""

import re

_SECRET = re.compile(r"\b(?:sk|rk|pk|sess)-[A-Za-z0-9_\-]{16,}|\bBearer\s+[A-Za-z0-9._\-]{16,}")
_EMAIL = re.compile(r"\b[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}\b")
_PHONE = re.compile(r"(?<![\w(])(?:\+|\()?\d[\d ().\-]{7,}\d(?!\w)")


def mask_secrets(text: str, *secrets: str | None) -> str:
    """``text`` with the given secrets and anything shaped like an API key masked."""
    for secret in secrets:
        if secret and len(secret) >= 8:
            text = text.replace(secret, "[secret]")
    return _SECRET.sub("[secret]", text)


def redact(text: str) -> str:
    """``text`` with key-like strings, e-mail addresses and phone numbers masked."""
    return _PHONE.sub("[phone]", _EMAIL.sub("[email]", mask_secrets(text)))
