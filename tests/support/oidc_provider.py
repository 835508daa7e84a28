"""A tiny OpenID Connect provider on loopback, so browser tests can run Streamlit's real ``st.login`` flow offline.

Authorization-code flow only (PKCE S256, client_secret_basic or client_secret_post, RS256 ID tokens). Users are
a fixed list of e-mail addresses picked by a button; there are no passwords. It is a test fixture, never a server:
it binds 127.0.0.1 only, redirects only to loopback URLs, keeps everything in memory and exits on SIGTERM, SIGINT
or after ``--max-lifetime`` seconds.

    python tests/support/oidc_provider.py --port 0 --users alice@example.org,bob@example.org \\
        --client-id metalab-test --client-secret s3cret --ready-file /tmp/oidc.ready
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import html
import json
import os
import secrets
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote_plus, urlencode, urlsplit, urlunsplit

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

CODE_TTL_S = 60
TOKEN_TTL_S = 3600
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _int_b64url(value: int) -> str:
    return _b64url(value.to_bytes((value.bit_length() + 7) // 8, "big"))


class Signer:
    """An RSA key that signs compact JWS tokens with RS256 and publishes itself as a JWK set."""

    def __init__(self) -> None:
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        numbers = self._key.public_key().public_numbers()
        self._public = {"kty": "RSA", "n": _int_b64url(numbers.n), "e": _int_b64url(numbers.e)}
        # RFC 7638 thumbprint: a stable key id derived from the key itself.
        canonical = json.dumps({k: self._public[k] for k in ("e", "kty", "n")}, separators=(",", ":"))
        self.kid = _b64url(hashlib.sha256(canonical.encode()).digest())

    def jwks(self) -> dict[str, Any]:
        return {"keys": [dict(self._public, kid=self.kid, use="sig", alg="RS256")]}

    def sign(self, claims: dict[str, Any]) -> str:
        header = {"alg": "RS256", "typ": "JWT", "kid": self.kid}
        signing_input = ".".join(_b64url(json.dumps(part, separators=(",", ":")).encode()) for part in (header, claims))
        signature = self._key.sign(signing_input.encode("ascii"), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64url(signature)}"


@dataclass
class Grant:
    """What an authorization code (and the tokens it buys) is bound to."""

    client_id: str
    redirect_uri: str
    email: str
    scope: str
    nonce: str | None
    code_challenge: str | None
    expires: float
    auth_time: int = field(default_factory=lambda: int(time.time()))


@dataclass
class Provider:
    """The provider's state: registered client, users, signing key, and the live codes and access tokens."""

    issuer: str
    client_id: str
    client_secret: str
    users: tuple[str, ...]
    redirect_uris: tuple[str, ...] = ()
    signer: Signer = field(default_factory=Signer)
    codes: dict[str, Grant] = field(default_factory=dict)
    access_tokens: dict[str, Grant] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def metadata(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "authorization_endpoint": f"{self.issuer}/authorize",
            "token_endpoint": f"{self.issuer}/token",
            "userinfo_endpoint": f"{self.issuer}/userinfo",
            "jwks_uri": f"{self.issuer}/jwks",
            "response_types_supported": ["code"],
            "grant_types_supported": ["authorization_code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "scopes_supported": ["openid", "email", "profile"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "code_challenge_methods_supported": ["S256"],
            "claims_supported": ["iss", "sub", "aud", "exp", "iat", "auth_time", "nonce", "email",
                                 "email_verified", "name"],
        }

    def redirect_uri_allowed(self, uri: str) -> bool:
        if self.redirect_uris:
            return uri in self.redirect_uris
        # No registered list: any plain-http loopback URL, which still rules out open redirects off the machine.
        try:
            parts = urlsplit(uri)
        except ValueError:
            return False
        return parts.scheme == "http" and parts.hostname in LOOPBACK_HOSTS and not parts.fragment

    def claims(self, grant: Grant) -> dict[str, Any]:
        """The identity claims of a grant's user (the ID token's and /userinfo's common part)."""
        local = grant.email.split("@", 1)[0]
        return {
            # A subject that stays the same across provider restarts, as a real provider's would.
            "sub": "user-" + hashlib.sha256(grant.email.encode()).hexdigest()[:16],
            "email": grant.email,
            "email_verified": True,
            "name": local.replace(".", " ").title(),
        }

    def issue_code(self, grant: Grant) -> str:
        code = secrets.token_urlsafe(32)
        with self.lock:
            now = time.time()
            for stale in [c for c, g in self.codes.items() if g.expires < now]:
                del self.codes[stale]
            self.codes[code] = grant
        return code

    def redeem_code(self, code: str) -> Grant | None:
        """Removes the code whatever happens next: a code is good for one attempt only."""
        with self.lock:
            grant = self.codes.pop(code, None)
        if grant is None or grant.expires < time.time():
            return None
        return grant

    def issue_tokens(self, grant: Grant) -> dict[str, Any]:
        access_token = secrets.token_urlsafe(32)
        now = int(time.time())
        with self.lock:
            self.access_tokens[access_token] = Grant(**{**grant.__dict__, "expires": now + TOKEN_TTL_S})
        digest = hashlib.sha256(access_token.encode("ascii")).digest()
        id_claims = {
            "iss": self.issuer, "aud": self.client_id, "iat": now, "exp": now + TOKEN_TTL_S,
            "auth_time": grant.auth_time, "at_hash": _b64url(digest[:16]), **self.claims(grant),
        }
        if grant.nonce is not None:
            id_claims["nonce"] = grant.nonce
        return {"access_token": access_token, "token_type": "Bearer", "expires_in": TOKEN_TTL_S,
                "scope": grant.scope, "id_token": self.signer.sign(id_claims)}

    def userinfo(self, access_token: str) -> dict[str, Any] | None:
        with self.lock:
            grant = self.access_tokens.get(access_token)
        if grant is None or grant.expires < time.time():
            return None
        return self.claims(grant)


class OAuthError(Exception):
    """An OAuth error response: ``error`` and ``description`` as RFC 6749 spells them."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error, self.description, self.status = error, description, status


def _with_query(uri: str, params: dict[str, str]) -> str:
    parts = urlsplit(uri)
    query = "&".join(filter(None, [parts.query, urlencode(params)]))
    return urlunsplit(parts._replace(query=query))


_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Test OIDC provider: sign in</title></head>
<body>
<h1>Sign in to {client}</h1>
{error}
<form method="post" action="/authorize">
{hidden}
<p>{buttons}</p>
<p><label>Email <input type="email" name="email_typed" autocomplete="off"></label>
<button type="submit" name="email" value="">Sign in</button></p>
</form>
</body></html>
"""

_AUTH_PARAMS = ("client_id", "redirect_uri", "response_type", "scope", "state", "nonce", "code_challenge",
                "code_challenge_method")


class Handler(BaseHTTPRequestHandler):
    provider: Provider  # set on the subclass made in serve()
    quiet = False
    server_version = "metalab-test-oidc/1"

    # -- plumbing -------------------------------------------------------------------------------------------
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        if not self.quiet:
            # Never log query strings: they carry codes and states.
            sys.stderr.write(f"oidc {self.command} {urlsplit(self.path).path} {args[1] if len(args) > 1 else ''}\n")

    def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json", headers)

    def _html(self, status: int, text: str) -> None:
        self._send(status, text.encode(), "text/html; charset=utf-8")

    def _redirect(self, location: str) -> None:
        self._send(HTTPStatus.FOUND, b"", "text/plain", {"Location": location})

    def _form(self) -> dict[str, str]:
        length = int(self.headers.get("Content-Length") or 0)
        if length > 64 * 1024:
            raise OAuthError("invalid_request", "request body too large", 413)
        body = self.rfile.read(length).decode("utf-8", "replace")
        return {k: v[0] for k, v in parse_qs(body, keep_blank_values=True).items()}

    def _query(self) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(urlsplit(self.path).query, keep_blank_values=True).items()}

    # -- routes ---------------------------------------------------------------------------------------------
    def do_GET(self) -> None:  # noqa: N802 - the base class's name
        route = urlsplit(self.path).path
        if route == "/.well-known/openid-configuration":
            self._json(200, self.provider.metadata())
        elif route == "/jwks":
            self._json(200, self.provider.signer.jwks())
        elif route == "/authorize":
            self._authorize(self._query(), submitted=False)
        elif route == "/userinfo":
            self._userinfo()
        elif route == "/health":
            self._send(200, b"ok", "text/plain")
        else:
            self._json(404, {"error": "not_found"})

    def do_POST(self) -> None:  # noqa: N802
        route = urlsplit(self.path).path
        try:
            form = self._form()
        except OAuthError as exc:
            self._json(exc.status, {"error": exc.error, "error_description": exc.description})
            return
        if route == "/authorize":
            self._authorize(form, submitted=True)
        elif route == "/token":
            self._token(form)
        elif route == "/userinfo":
            self._userinfo()
        else:
            self._json(404, {"error": "not_found"})

    def _authorize(self, params: dict[str, str], *, submitted: bool) -> None:
        provider = self.provider
        redirect_uri = params.get("redirect_uri", "")
        # Errors about the client or the redirect target are shown, never redirected (RFC 6749 4.1.2.1).
        if params.get("client_id") != provider.client_id:
            self._html(400, f"<p>Unknown client_id. Received: client_id={html.escape(params.get('client_id', ''))}</p>")
            return
        if not provider.redirect_uri_allowed(redirect_uri):
            self._html(400, f"<p>redirect_uri not allowed. Received: redirect_uri={html.escape(redirect_uri)}</p>")
            return
        state = params.get("state")

        def fail(error: str, description: str) -> None:
            reply = {"error": error, "error_description": description}
            if state is not None:
                reply["state"] = state
            self._redirect(_with_query(redirect_uri, reply))

        if params.get("response_type") != "code":
            return fail("unsupported_response_type", "only response_type=code is supported")
        if "openid" not in params.get("scope", "").split():
            return fail("invalid_scope", "the scope must include openid")
        challenge = params.get("code_challenge") or None
        if challenge is not None and params.get("code_challenge_method") != "S256":
            return fail("invalid_request", "only code_challenge_method=S256 is supported")

        if not submitted:
            self._login_page(params)
            return
        email = (params.get("email") or params.get("email_typed") or "").strip().lower()
        if email not in provider.users:
            self._login_page(params, error=f"Unknown user. Received: email={email}")
            return
        grant = Grant(client_id=provider.client_id, redirect_uri=redirect_uri, email=email,
                      scope=params.get("scope", "openid"), nonce=params.get("nonce") or None,
                      code_challenge=challenge, expires=time.time() + CODE_TTL_S)
        reply = {"code": provider.issue_code(grant)}
        if state is not None:
            reply["state"] = state
        self._redirect(_with_query(redirect_uri, reply))

    def _login_page(self, params: dict[str, str], error: str = "") -> None:
        hidden = "\n".join(
            f'<input type="hidden" name="{name}" value="{html.escape(params[name])}">'
            for name in _AUTH_PARAMS if name in params
        )
        buttons = " ".join(
            f'<button type="submit" name="email" value="{html.escape(user)}">{html.escape(user)}</button>'
            for user in self.provider.users
        )
        self._html(200 if not error else 403, _PAGE.format(
            client=html.escape(self.provider.client_id), hidden=hidden, buttons=buttons,
            error=f'<p role="alert">{html.escape(error)}</p>' if error else "",
        ))

    def _client_credentials(self, form: dict[str, str]) -> tuple[str, str]:
        header = self.headers.get("Authorization", "")
        self.auth_method = "client_secret_basic" if header.lower().startswith("basic ") else "client_secret_post"
        if header.lower().startswith("basic "):
            try:
                decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
                client_id, _, secret = decoded.partition(":")
            except ValueError as exc:
                raise OAuthError("invalid_client", "malformed Basic credentials", 401) from exc
            # RFC 6749 2.3.1: both parts are form-urlencoded before being joined.
            return unquote_plus(client_id), unquote_plus(secret)
        return form.get("client_id", ""), form.get("client_secret", "")

    def _token(self, form: dict[str, str]) -> None:
        provider = self.provider
        try:
            client_id, secret = self._client_credentials(form)
            if not (hmac.compare_digest(client_id.encode(), provider.client_id.encode())
                    and hmac.compare_digest(secret.encode(), provider.client_secret.encode())):
                raise OAuthError("invalid_client", "client authentication failed", 401)
            if form.get("grant_type") != "authorization_code":
                raise OAuthError("unsupported_grant_type", "only authorization_code is supported")
            grant = provider.redeem_code(form.get("code", ""))
            if grant is None:
                raise OAuthError("invalid_grant", "the code is unknown, used or expired")
            if grant.client_id != client_id:
                raise OAuthError("invalid_grant", "the code was issued to another client")
            if grant.redirect_uri != form.get("redirect_uri"):
                raise OAuthError("invalid_grant", "redirect_uri differs from the authorization request")
            if grant.code_challenge is not None:
                verifier = form.get("code_verifier", "")
                computed = _b64url(hashlib.sha256(verifier.encode("ascii", "replace")).digest())
                if not verifier or not hmac.compare_digest(computed, grant.code_challenge):
                    raise OAuthError("invalid_grant", "PKCE verification failed")
        except OAuthError as exc:
            headers = {"WWW-Authenticate": 'Basic realm="token"'} if exc.status == 401 else None
            self._json(exc.status, {"error": exc.error, "error_description": exc.description}, headers)
            return
        self._json(200, provider.issue_tokens(grant), {"Pragma": "no-cache"})
        if not self.quiet:
            sys.stderr.write(f"oidc tokens issued for {grant.email} (client auth {self.auth_method}, "
                             f"pkce {'S256' if grant.code_challenge else 'none'}, "
                             f"nonce {'yes' if grant.nonce else 'none'})\n")

    def _userinfo(self) -> None:
        header = self.headers.get("Authorization", "")
        claims = self.provider.userinfo(header[7:].strip()) if header.lower().startswith("bearer ") else None
        if claims is None:
            self._json(401, {"error": "invalid_token"}, {"WWW-Authenticate": 'Bearer error="invalid_token"'})
            return
        self._json(200, claims)


def serve(args: argparse.Namespace) -> int:
    users = tuple(dict.fromkeys(u.strip().lower() for u in args.users.split(",") if u.strip()))
    if not users:
        sys.stderr.write("--users must name at least one e-mail address\n")
        return 2
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    base_url = f"http://127.0.0.1:{server.server_address[1]}"
    provider = Provider(issuer=base_url, client_id=args.client_id, client_secret=args.client_secret, users=users,
                        redirect_uris=tuple(args.redirect_uri or ()))
    server.RequestHandlerClass = type("BoundHandler", (Handler,), {"provider": provider, "quiet": args.quiet})

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
    thread.start()
    if args.ready_file:
        # Written whole and renamed, so a reader never sees half a URL.
        ready = Path(args.ready_file)
        partial = ready.with_name(ready.name + ".partial")
        partial.write_text(base_url + "\n")
        os.replace(partial, ready)
    sys.stderr.write(f"oidc provider listening on {base_url} for {', '.join(users)}\n")
    sys.stderr.flush()
    stop.wait(args.max_lifetime)
    server.shutdown()
    server.server_close()
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free one)")
    parser.add_argument("--users", required=True, help="comma-separated e-mail addresses that may sign in")
    parser.add_argument("--client-id", required=True)
    parser.add_argument("--client-secret", required=True)
    parser.add_argument("--redirect-uri", action="append",
                        help="a registered redirect URI (repeatable); default: any http loopback URL")
    parser.add_argument("--ready-file", help="written with the base URL once the provider listens")
    parser.add_argument("--max-lifetime", type=float, default=1800.0,
                        help="seconds after which the provider exits by itself (a guard against strays)")
    parser.add_argument("--quiet", action="store_true", help="no request log on stderr")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(serve(parse_args()))
