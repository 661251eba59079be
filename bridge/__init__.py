"""Bridge: single sign-on between Active Directory, Microsoft 365 / Entra ID and partner apps."""

__version__ = "0.1.0"
