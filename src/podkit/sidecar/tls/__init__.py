"""``podkit tls``: terminate TLS in front of a plain-HTTP application."""

from podkit.sidecar.tls._context import (
    CertificateError,
    CertificateStore,
    CertPair,
    ReloadResult,
    name_matches,
    new_server_context,
    parse_sni,
    subject_text,
)

__all__ = [
    "CertPair",
    "CertificateError",
    "CertificateStore",
    "ReloadResult",
    "name_matches",
    "new_server_context",
    "parse_sni",
    "subject_text",
]
