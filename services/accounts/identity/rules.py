"""Identity's input rules, pure: what a sign-up and an OAuth client registration must look like."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from shared.errors import bad_request

MIN_PASSWORD = 8
MAX_PASSWORD = 1024
MAX_EMAIL = 254
MAX_NAME = 200

# Deliberately loose (one @, no spaces, a dot in the domain): only the welcome email proves an address.
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s.]+$")
_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*$")


def normalise_email(email: str) -> str:
    """The address as typed, trimmed. Uniqueness ignores case: an index on lower(email)."""
    return email.strip()


def check_sign_up(email: str, password: str, name: str) -> None:
    if len(email) > MAX_EMAIL or not _EMAIL.match(email):
        raise bad_request("bad_param.email", "email must be an email address", param="email")
    if len(password) < MIN_PASSWORD:
        raise bad_request(
            "bad_param.password", f"password must be at least {MIN_PASSWORD} characters", param="password"
        )
    if len(password) > MAX_PASSWORD:
        raise bad_request(
            "bad_param.password", f"password must be at most {MAX_PASSWORD} characters", param="password"
        )
    if not name.strip():
        raise bad_request("bad_param.name", "name must not be empty", param="name")
    if len(name) > MAX_NAME:
        raise bad_request("bad_param.name", f"name must be at most {MAX_NAME} characters", param="name")


def check_redirect_uri(uri: str) -> str:
    """An absolute URI without a fragment (RFC 6749 §3.1.2): https, http, or an app's own scheme."""
    parts = urlsplit(uri)
    if not _SCHEME.match(parts.scheme) or parts.fragment or any(c.isspace() for c in uri):
        raise bad_request(
            "bad_param.redirect_uri",
            f"{uri!r} is not an absolute URI without a fragment",
            param="redirect_uri",
        )
    if parts.scheme in ("http", "https") and not parts.hostname:
        raise bad_request("bad_param.redirect_uri", f"{uri!r} has no host", param="redirect_uri")
    if parts.scheme in ("javascript", "data", "vbscript", "file"):
        raise bad_request("bad_param.redirect_uri", f"{uri!r} cannot be a redirect", param="redirect_uri")
    return uri


def with_query(uri: str, params: dict[str, str]) -> str:
    """`uri` with `params` added to its query string (keeping any query it already has)."""
    parts = urlsplit(uri)
    query = [*parse_qsl(parts.query, keep_blank_values=True), *params.items()]
    return urlunsplit(parts._replace(query=urlencode(query)))
