"""relay365: legacy SMTP/IMAP in, Office 365 with XOAUTH2 out."""

__version__ = "0.1.0"
