"""The SMTP side: aiosmtpd in front (`server`), aiosmtplib to Office 365 (`upstream`), and the pure
parts between them: header rewriting (`rewrite`) and the mapping of failures to replies (`replies`)."""
