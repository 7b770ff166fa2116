"""Keep secrets out of everything a person or another process can read: logs, errors, ``ps``.

URLs are the usual carrier: ``http://user:pw@host/x`` and ``...?token=abc`` reach log lines on
every reconnect, error messages, ``check-config`` output and child command lines.  Everything that
prints a URL passes it through ``redact_url``; free text that may quote one (ffmpeg's stderr, a
client library's exception) passes through ``redact_text``.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

MASK = "***"

_SECRET_PARAM = re.compile(
    r"(token|key|secret|pass|pwd|auth|sig|signature|credential|session|sid|jwt)", re.IGNORECASE,
)
"""Query parameter names whose values are credentials (``token``, ``api_key``, ``password``,
``X-Amz-Signature``, ``sessionid`` ...): matched anywhere in the name, so it errs on hiding."""

_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


def _is_secret_param(name: str) -> bool:
    return bool(_SECRET_PARAM.search(name))


def url_has_secrets(url: str) -> bool:
    """Whether ``url`` carries a user name, a password or a credential-like query parameter."""
    return redact_url(url) != url


def redact_url(url: str) -> str:
    """``http://user:pw@host/x?token=t&q=1`` -> ``http://***@host/x?token=***&q=1``.

    Anything that does not parse as a URL with a scheme is returned unchanged (a file path has no
    secrets of this kind).  Never raises: it is called while reporting other errors.
    """
    try:
        parts = urlsplit(url)
        if not parts.scheme or (not parts.netloc and not parts.query):
            return url
        netloc = parts.netloc
        if "@" in netloc:
            netloc = f"{MASK}@{netloc.rsplit('@', 1)[1]}"
        query = parts.query
        if query:
            pairs = parse_qsl(query, keep_blank_values=True)
            if any(_is_secret_param(k) for k, _ in pairs):
                query = urlencode(
                    [(k, MASK if _is_secret_param(k) else v) for k, v in pairs], safe="*",
                )
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:  # a malformed port or IPv6 literal: hide everything after the scheme
        scheme = url.split("://", 1)[0]
        return f"{scheme}://{MASK}"


def redact_text(text: str, secrets: tuple[str, ...] = ()) -> str:
    """Redact every URL found in free text, and each literal ``secrets`` value (a token, a password
    that a library may quote on its own)."""
    redacted = _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), text)
    for secret in secrets:
        if secret:
            redacted = redacted.replace(secret, MASK)
    return redacted
