"""TLS server contexts with modern defaults, SNI over several certificates, and safe reloads.

Theory of operation. The listener has one *base* :class:`ssl.SSLContext`; it serves the
default certificate (clients that send no server name, e.g. those connecting to an IP
address) and carries an ``sni_callback`` that moves a connection whose server name matches a
``--sni`` entry onto that entry's own context. Every context is configured alike: TLS 1.2 or
1.3 at least, no compression, no renegotiation, forward-secret AEAD cipher suites only
(ECDHE with AES-GCM or ChaCha20-Poly1305; TLS 1.3's suites are all of that kind), ALPN
``http/1.1``, and — with a client CA — client certificates required and verified.

Reloading never leaves a broken context behind: the certificate and key files are copied to
a private snapshot, loaded into a scratch context first (which checks that the key matches),
and only then into the live one. A pair that fails is refused with a log line and the old
certificate keeps being served. New connections get the new certificate; connections already
open keep the one they were established with.
"""

from __future__ import annotations

import os
import shutil
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from podkit.errors import ConfigError, PodkitError

# TLS 1.2 suites: ephemeral ECDH key exchange (forward secrecy) and AEAD ciphers only, as in
# Mozilla's "intermediate" profile. TLS 1.3 suites are AEAD with forward secrecy by design.
TLS12_CIPHERS: Final = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL:!MD5:!SHA1:!DSS"
ALPN_PROTOCOLS: Final = ("http/1.1",)
MIN_VERSIONS: Final[dict[str, ssl.TLSVersion]] = {
    "1.2": ssl.TLSVersion.TLSv1_2,
    "1.3": ssl.TLSVersion.TLSv1_3,
}
SUBJECT_SHORT_NAMES: Final[dict[str, str]] = {
    "commonName": "CN",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "countryName": "C",
    "stateOrProvinceName": "ST",
    "localityName": "L",
    "domainComponent": "DC",
    "serialNumber": "serialNumber",
    "emailAddress": "emailAddress",
}


_READABLE_REASONS: Final[dict[str, str]] = {
    "KEY_VALUES_MISMATCH": "the private key does not match the certificate",
    "PEM_LIB": "not a PEM certificate and key",
    "NO_START_LINE": "no PEM data found",
    "EE_KEY_TOO_SMALL": "the key is too small",
    "CA_MD_TOO_WEAK": "the certificate's signature hash is too weak",
}


class CertificateError(PodkitError):
    """A certificate/key pair could not be loaded (unreadable, malformed, key mismatch)."""


@dataclass(frozen=True, slots=True)
class CertPair:
    """A certificate chain file and its private key, served for ``names`` (SNI).

    An empty ``names`` marks the default pair, served when no other name matches.
    """

    cert: str
    key: str
    names: tuple[str, ...] = ()


def parse_sni(text: str) -> CertPair:
    """``NAME=CERT,KEY`` (NAME may be ``*.example.com``; several names joined by ``|``).

    Raises:
        ConfigError: not of that form.
    """
    name, sep, files = text.partition("=")
    cert, comma, key = files.partition(",")
    if not sep or not comma or not name.strip() or not cert or not key:
        raise ConfigError(f"expected NAME=CERT,KEY, got {text!r}", path="--sni")
    names = tuple(n.strip().lower().rstrip(".") for n in name.split("|") if n.strip())
    return CertPair(cert, key, names)


def name_matches(pattern: str, server_name: str) -> bool:
    """Whether ``server_name`` matches ``pattern`` (a wildcard covers exactly one label)."""
    name = server_name.lower().rstrip(".")
    if pattern.startswith("*."):
        head, dot, rest = name.partition(".")
        return bool(head) and bool(dot) and rest == pattern[2:]
    return name == pattern


def subject_text(peer_cert: dict[str, Any] | None) -> str | None:
    """A certificate subject as ``CN=client,O=Example`` (RFC 4514 order: most specific first)."""
    if not peer_cert:
        return None
    parts = []
    for rdn in reversed(peer_cert.get("subject", ())):
        for key, value in rdn:
            short = SUBJECT_SHORT_NAMES.get(key, key)
            escaped = value.replace("\\", "\\\\").replace(",", "\\,").replace("+", "\\+")
            parts.append(f"{short}={escaped}")
    return ",".join(parts) or None


def new_server_context(*, min_version: str = "1.2", client_ca: str | None = None) -> ssl.SSLContext:
    """A server context with the modern defaults above and no certificate yet.

    Raises:
        ConfigError: unknown ``min_version`` or an unreadable client CA file.
    """
    if min_version not in MIN_VERSIONS:
        raise ConfigError(f"expected 1.2 or 1.3, got {min_version!r}", path="--min-version")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = MIN_VERSIONS[min_version]
    context.options |= (
        ssl.OP_NO_COMPRESSION  # CRIME
        | ssl.OP_CIPHER_SERVER_PREFERENCE
        | ssl.OP_SINGLE_ECDH_USE
        | ssl.OP_NO_RENEGOTIATION
    )
    context.set_ciphers(TLS12_CIPHERS)
    context.set_alpn_protocols(list(ALPN_PROTOCOLS))
    if client_ca is not None:
        try:
            context.load_verify_locations(cafile=client_ca)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load client CA: {exc}", source=client_ca) from exc
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _signature(pair: CertPair) -> tuple[tuple[int, int, int], ...]:
    out = []
    for path in (pair.cert, pair.key):
        try:
            st = os.stat(path)
            out.append((st.st_ino, st.st_size, st.st_mtime_ns))
        except OSError:
            out.append((0, 0, 0))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class ReloadResult:
    """Which pairs were loaded anew and which were refused (with the reason)."""

    loaded: tuple[CertPair, ...]
    refused: tuple[tuple[CertPair, str], ...]


class CertificateStore:
    """The base context the listener uses and the per-name contexts behind SNI.

    Args:
        default: the pair for clients whose server name matches no ``sni`` pair.
        sni: pairs served to clients asking for one of their names.
        min_version: ``"1.2"`` or ``"1.3"``.
        client_ca: require and verify client certificates signed by this CA bundle.

    Raises:
        ConfigError: a pair cannot be loaded at start (there is no old one to keep).
    """

    def __init__(
        self,
        default: CertPair,
        sni: list[CertPair] | None = None,
        *,
        min_version: str = "1.2",
        client_ca: str | None = None,
    ) -> None:
        self.min_version = min_version
        self.client_ca = client_ca
        self.default = default
        self.sni = list(sni or [])
        self.context = new_server_context(min_version=min_version, client_ca=client_ca)
        self._by_pair: dict[CertPair, ssl.SSLContext] = {}
        self._signatures: dict[CertPair, tuple[tuple[int, int, int], ...]] = {}
        for pair in [default, *self.sni]:
            try:
                self._load(pair)
            except CertificateError as exc:
                raise ConfigError(str(exc), source=pair.cert) from exc
        self.context.sni_callback = self._choose

    def _snapshot(self, pair: CertPair) -> tuple[str, str]:
        folder = Path(tempfile.mkdtemp(prefix="podkit-tls-"))  # mode 0700: it holds a key
        cert, key = folder / "cert.pem", folder / "key.pem"
        try:
            shutil.copyfile(pair.cert, cert)
            shutil.copyfile(pair.key, key)
        except OSError as exc:
            shutil.rmtree(folder, ignore_errors=True)
            raise CertificateError(f"cannot read {exc.filename}: {exc.strerror}") from exc
        return str(cert), str(key)

    def _load(self, pair: CertPair) -> None:
        signature = _signature(pair)
        cert, key = self._snapshot(pair)
        try:
            try:
                scratch = new_server_context(min_version=self.min_version, client_ca=self.client_ca)
            except ConfigError as exc:  # e.g. the client CA file went away since the start
                raise CertificateError(exc.reason) from exc
            try:
                scratch.load_cert_chain(cert, key)
            except ssl.SSLError as exc:
                reason = _READABLE_REASONS.get(str(exc.reason), str(exc.reason or exc))
                raise CertificateError(f"{pair.cert} / {pair.key}: {reason}") from exc
            if pair.names:
                self._by_pair[pair] = scratch  # served through the SNI callback
            else:
                # The listener's context itself: load the pair that was just proven good.
                self.context.load_cert_chain(cert, key)
        finally:
            shutil.rmtree(Path(cert).parent, ignore_errors=True)
        self._signatures[pair] = signature

    def _choose(self, sslobj: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> None:
        if server_name is None:
            return
        for pair in self.sni:
            if any(name_matches(pattern, server_name) for pattern in pair.names):
                context = self._by_pair.get(pair)
                if context is not None:
                    sslobj.context = context
                return

    def changed(self) -> list[CertPair]:
        """The pairs whose files changed on disk since they were last loaded (or tried)."""
        return [p for p in [self.default, *self.sni] if _signature(p) != self._signatures.get(p)]

    def reload(self, *, force: bool = False) -> ReloadResult:
        """Load every pair whose files changed (every pair with ``force``, as on SIGHUP).

        A pair that fails to load is refused and the certificate it would have replaced is
        still served; its current file signature is remembered so the same broken files are
        not retried until they change again.
        """
        loaded: list[CertPair] = []
        refused: list[tuple[CertPair, str]] = []
        for pair in [self.default, *self.sni] if force else self.changed():
            try:
                self._load(pair)
            except CertificateError as exc:
                self._signatures[pair] = _signature(pair)
                refused.append((pair, str(exc)))
            else:
                loaded.append(pair)
        return ReloadResult(tuple(loaded), tuple(refused))
