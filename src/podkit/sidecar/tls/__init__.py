"""``podkit tls``: terminate TLS in front of a plain-HTTP application."""

from podkit.sidecar.tls._command import command
from podkit.sidecar.tls._context import (
    CertificateError,
    CertificateStore,
    CertPair,
    ReloadResult,
    name_matches,
    new_server_context,
    parse_sni,
    read_client_ca,
    subject_text,
)
from podkit.sidecar.tls._server import (
    TLSSettings,
    pass_client_subject,
    redirect_to_https,
    serve_tls,
)

__all__ = [
    "CertPair",
    "CertificateError",
    "CertificateStore",
    "ReloadResult",
    "TLSSettings",
    "command",
    "name_matches",
    "new_server_context",
    "parse_sni",
    "pass_client_subject",
    "read_client_ca",
    "redirect_to_https",
    "serve_tls",
    "subject_text",
]
