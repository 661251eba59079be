"""OAuth 2.0 / OpenID Connect provider built on Authlib (see server.py)."""
