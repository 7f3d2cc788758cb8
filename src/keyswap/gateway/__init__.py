"""The gateway (edge side, ``gateway`` extra): API keys in, short-lived JWTs out.

Modules: :mod:`~keyswap.gateway.secret` (server secret and derived subkeys),
:mod:`~keyswap.gateway.apikeys` (consumers' API keys), :mod:`~keyswap.gateway.keyring` and
:mod:`~keyswap.gateway.keymaterial` (signing keys),
:mod:`~keyswap.gateway.cli` (``keyswap consumers|keys|signing-keys|db|gateway|demo``), plus the app,
proxy and minting modules. Nothing is imported here, so each module loads only what it needs.
"""
