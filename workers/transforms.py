"""Built-in pure transforms: PII redaction and a speech-to-text stand-in.

Both are plain functions referenced from specs by import path
(``workers.transforms:redact_pii``) and called with the node's inputs as keyword arguments.
"""

from __future__ import annotations

import base64
import binascii
import re

__all__ = ["redact_pii", "speech_to_text", "luhn_ok"]

_EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
# 13-19 digits, optionally grouped by single spaces or dashes; Luhn-checked before redaction.
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
# International: +<country> then 6-14 more digits in groups; US: (555) 123-4567, 555-123-4567,
# 555.123.4567, optionally with a leading 1.
_PHONE = re.compile(
    r"(?<![\w+])(?:"
    r"\+\d{1,3}(?:[ .-]?\(?\d{1,4}\)?){2,5}"
    r"|(?:1[ .-]?)?(?:\(\d{3}\)\s?|\d{3}[ .-])\d{3}[ .-]\d{4}"
    r")(?!\w)"
)


def luhn_ok(digits: str) -> bool:
    """True when the digit string passes the Luhn checksum."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _card(match: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", match.group(0))
    return "[CARD]" if 13 <= len(digits) <= 19 and luhn_ok(digits) else match.group(0)


def redact_pii(text: str | list) -> str:
    """Replace e-mail addresses, payment card numbers (Luhn-valid) and phone numbers.

    Lists are joined with newlines first. Cards are handled before phones so that a card's
    digit groups are not mistaken for a phone number.
    """
    if isinstance(text, (list, tuple)):  # e.g. search hits: [{"id", "text", "score"}, ...]
        text = "\n".join(str(t["text"]) if isinstance(t, dict) and "text" in t else str(t) for t in text)
    elif not isinstance(text, str):
        raise TypeError(f"redact_pii expects str or list[str], got {type(text).__name__}")
    out = _EMAIL.sub("[EMAIL]", text)
    out = _CARD.sub(_card, out)
    out = _PHONE.sub(lambda m: "[PHONE]" if len(re.sub(r"\D", "", m.group(0))) >= 7 else m.group(0), out)
    return out


def speech_to_text(audio: str) -> str:
    """Stand-in for ASR: decodes a base64 payload that carries UTF-8 *text*.

    Real speech recognition (e.g. a Whisper worker) is out of scope for the CPU runtime; this
    keeps graphs with an ASR step runnable end to end. Raises ValueError on invalid base64 or
    a payload that is not UTF-8 text.
    """
    if not isinstance(audio, str):
        raise ValueError("speech_to_text expects a base64 string")
    try:
        raw = base64.b64decode(audio.strip(), validate=True)
        return raw.decode("utf-8")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise ValueError(f"invalid audio payload (expected base64-encoded UTF-8 text): {exc}") from exc
