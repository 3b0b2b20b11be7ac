"""The server-rendered login + consent page of ``/auth/authorize`` and its error page (no JavaScript)."""

from __future__ import annotations

from html import escape

from medcloud.security.oauth.authorize import AuthorizationRequest

_STYLE = ("body{font-family:system-ui,sans-serif;max-width:32rem;margin:2rem auto;padding:0 1rem;color:#222}"
          "h1{font-size:1.3rem}ul{padding-left:1.2rem}code{background:#f3f3f3;padding:0 .2rem}"
          "label{display:block;margin:.6rem 0 .2rem}input[type=text],input[type=password]{width:100%;padding:.4rem}"
          "button{margin:1rem .5rem 0 0;padding:.5rem 1.2rem}.error{color:#a00;font-weight:bold}")

# What a scope lets the app do, for people rather than for parsers.
_CONTEXT = {
    "launch": "know the context it was launched in",
    "launch/patient": "work on one patient's record (chosen below or linked to your account)",
    "fhirUser": "know who you are (your FHIR user reference)",
    "offline_access": "keep access after you close it (refresh token, 30 days)",
    "online_access": "keep access while you use it (refresh token, 12 hours)",
}
_LETTERS = {"c": "create", "r": "read", "u": "update", "d": "delete", "s": "search"}


def describe(scope: str) -> str:
    if scope in _CONTEXT:
        return _CONTEXT[scope]
    context, _, rest = scope.partition("/")
    rtype, _, perms = rest.partition(".")
    perms = perms.split("?", 1)[0]
    what = ", ".join(_LETTERS[c] for c in perms if c in _LETTERS)
    whose = {"patient": "the selected patient's", "user": "all the", "system": "all"}.get(context, "")
    kind = "resources of every type" if rtype == "*" else f"{rtype} resources"
    return f"{what} {whose} {kind}".strip()


def consent_page(request: AuthorizationRequest, csrf: str, *, error: str | None = None,
                 ask_patient: bool = False, username: str = "") -> str:
    hidden = "".join(f'<input type="hidden" name="{escape(k)}" value="{escape(v)}">' for k, v in request.params)
    items = "".join(f"<li><code>{escape(s)}</code>: {escape(describe(s))}</li>" for s in request.scopes)
    patient = ""
    if ask_patient:
        patient = ('<label for="patient">Patient id (leave empty if your account is linked to a patient)</label>'
                   '<input type="text" id="patient" name="patient" autocomplete="off" maxlength="64">')
    message = f'<p class="error">{escape(error)}</p>' if error else ""
    body = (
        f"<h1>{escape(request.client.name)} asks for access</h1>{message}"
        f"<p>Sign in to let <strong>{escape(request.client.name)}</strong> "
        f"(<code>{escape(request.client.client_id)}</code>):</p><ul>{items}</ul>"
        f'<form method="post" action="authorize">{hidden}<input type="hidden" name="csrf" value="{escape(csrf)}">'
        f'<label for="username">User name</label><input type="text" id="username" name="username" '
        f'value="{escape(username)}" autocomplete="username" required maxlength="128">'
        f'<label for="password">Password</label><input type="password" id="password" name="password" '
        f'autocomplete="current-password" required>{patient}'
        '<button type="submit" name="decision" value="approve">Approve</button>'
        '<button type="submit" name="decision" value="deny" formnovalidate>Deny</button></form>'
    )
    return _page("Authorize an application", body)


def error_page(message: str) -> str:
    return _page("Authorization error", f'<h1>Authorization error</h1><p class="error">{escape(message)}</p>'
                 "<p>The application's request cannot be processed. Close this window and contact "
                 "the application's provider.</p>")


def _page(title: str, body: str) -> str:
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f'<meta name="viewport" content="width=device-width,initial-scale=1"><style>{_STYLE}</style>'
            f"</head><body>{body}</body></html>")
