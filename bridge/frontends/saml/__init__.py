"""SAML 2.0 identity provider: metadata, SSO, SLO and IdP-initiated sign-on for partner apps."""
