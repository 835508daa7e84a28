"""The test OIDC provider's launcher: a random secret beginning with "-" once failed the team-mode browser test."""

import json
import urllib.request

from tests.support.team import start_oidc_provider


def test_the_provider_starts_with_a_secret_that_looks_like_an_option(tmp_path):
    with start_oidc_provider(tmp_path, ["ann@example.org"], client_secret="-looks-like-an-option",
                             redirect_uris=["http://127.0.0.1:1/oauth2callback"]) as provider:
        url = provider.base_url + "/.well-known/openid-configuration"
        with urllib.request.urlopen(url, timeout=10) as reply:
            assert json.loads(reply.read())["issuer"] == provider.base_url
