"""The HTML of the OAuth2 authorization step: a sign-in form and an error page.

Every value that came from a request is escaped. The pages ask not to be
framed (clickjacking), cached or leak their URL (with its state) as a referrer.
"""

from __future__ import annotations

from html import escape

# form-action is left out on purpose: browsers apply it to the redirect that follows the form,
# and that redirect goes to the client's own URI.
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}

_STYLE = """
body { font-family: system-ui, sans-serif; background: #14233c; color: #14233c; margin: 0; }
main { max-width: 22rem; margin: 4rem auto; background: #fff; border-radius: 12px; padding: 2rem; }
h1 { font-size: 1.3rem; margin-top: 0; }
label { display: block; margin: 1rem 0 .3rem; font-weight: 600; }
input[type=email], input[type=password] { width: 100%; box-sizing: border-box; padding: .6rem;
  border: 1px solid #b8c2cc; border-radius: 6px; font-size: 1rem; }
button { margin-top: 1.5rem; width: 100%; padding: .7rem; border: 0; border-radius: 6px;
  background: #ff4f40; color: #fff; font-size: 1rem; font-weight: 600; }
.error { background: #fde8e6; color: #9b1c10; padding: .6rem; border-radius: 6px; }
.small { color: #5b6b7b; font-size: .85rem; }
"""


def _page(title: str, body: str) -> str:
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body><main>{body}</main></body></html>\n"
    )


def login_page(*, client_name: str, hidden: dict[str, str], email: str = "", error: str | None = None) -> str:
    """Sign in to let `client_name` use your account. `hidden` carries the authorization request."""
    fields = "".join(
        f'<input type="hidden" name="{escape(name)}" value="{escape(value)}">'
        for name, value in hidden.items()
    )
    problem = f'<p class="error" role="alert">{escape(error)}</p>' if error else ""
    return _page(
        "Sign in to Mondo",
        f"<h1>Sign in to let {escape(client_name)} use your Mondo account</h1>{problem}"
        '<form method="post" action="authorize">'
        f"{fields}"
        '<label for="email">Email</label>'
        f'<input id="email" type="email" name="email" value="{escape(email)}" autocomplete="username"'
        " required autofocus>"
        '<label for="password">Password</label>'
        '<input id="password" type="password" name="password" autocomplete="current-password" required>'
        '<button type="submit">Sign in and allow</button>'
        "</form>"
        f'<p class="small">{escape(client_name)} will see your accounts, balance and transactions.</p>',
    )


def error_page(message: str) -> str:
    return _page(
        "Cannot sign in",
        f'<h1>This sign-in link does not work</h1><p class="error">{escape(message)}</p>'
        '<p class="small">Go back to the app you came from and try again.</p>',
    )
