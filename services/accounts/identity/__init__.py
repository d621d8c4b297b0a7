"""Accounts' identity: customers signing up, OAuth2 as Mondo had it, and the keys that sign access tokens.

The accounts app wires it in with:

    identity = IdentityService(runtime.db, ledger, settings)
    app = runtime.app(routers=[*identity_routers(identity), ...], on_startup=[identity.start])
    app.state.token_verifier = identity.verifier()
"""

from services.accounts.identity.api import identity_routers
from services.accounts.identity.service import IdentityService, TokenGrant, TokenRequest

__all__ = ["IdentityService", "TokenGrant", "TokenRequest", "identity_routers"]
