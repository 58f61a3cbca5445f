"""TLS server contexts with modern defaults, SNI over several certificates, and safe reloads.

Theory of operation. The listener has one *base* :class:`ssl.SSLContext`; it serves the
default certificate (clients that send no server name, e.g. those connecting to an IP
address) and carries an ``sni_callback`` that moves a connection whose server name matches a
``--sni`` entry onto that entry's own context. Every context is configured alike: TLS 1.2 or
1.3 at least, no compression, no renegotiation, forward-secret AEAD cipher suites only
(ECDHE with AES-GCM or ChaCha20-Poly1305; TLS 1.3's suites are all of that kind), ALPN
``http/1.1``, and — with a client CA — client certificates required and verified.

Reloading never leaves a broken context behind: the certificate and key files are read once
(a snapshot, so a half-written renewal cannot mix an old certificate with a new key), loaded
into a scratch context first (which checks that the key matches), and only then put in
service. A pair that fails is refused with a log line and the old certificate keeps being
served. New connections get the new certificate; connections already open keep the one they
were established with.

The client CA bundle (mutual TLS) is reloaded the same way. OpenSSL can add CAs to a
context's trust store but never take one out, so a changed bundle is served from fresh
contexts: one per pair, built from the pair's last good certificate and key (kept in memory)
and the new bundle. The SNI callback, which OpenSSL calls for every handshake (with no name
when the client sent none), moves each connection onto its pair's current context; the
verification of the client's certificate then uses that context's trust store. Until the
bundle first changes the default pair is served by the listener's own context and nothing
is moved. A bundle that cannot be read or holds no certificate is refused and the previous
one stays trusted. With a client CA no session tickets are issued, so no connection resumes a
session whose certificate was verified against a bundle no longer in force.
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


def _new_context(min_version: str, client_ca_pem: str | None) -> ssl.SSLContext:
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
    if client_ca_pem is not None:
        context.load_verify_locations(cadata=client_ca_pem)  # checked by read_client_ca
        context.verify_mode = ssl.CERT_REQUIRED
        # No session resumption with client certificates: a resumed session keeps the
        # certificate verified when it began, which would let a client whose CA has since
        # been taken out of the bundle back in without a check. Every connection is verified.
        context.options |= ssl.OP_NO_TICKET
        context.num_tickets = 0
    return context


def read_client_ca(path: str) -> str:
    """Read a client CA bundle (PEM) and check that it holds at least one certificate.

    Returns:
        The bundle's text.

    Raises:
        CertificateError: unreadable, not PEM, or without a certificate (e.g. half written).
    """
    try:
        text = Path(path).read_text(encoding="ascii")  # PEM is ASCII by definition
    except OSError as exc:
        raise CertificateError(f"cannot read client CA {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise CertificateError(f"client CA {path}: not a PEM file") from exc
    check = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        check.load_verify_locations(cadata=text)
    except (ssl.SSLError, ValueError) as exc:
        raise CertificateError(f"client CA {path}: no PEM certificate found") from exc
    if check.cert_store_stats()["x509"] == 0:
        raise CertificateError(f"client CA {path}: no PEM certificate found")
    return text


def new_server_context(*, min_version: str = "1.2", client_ca: str | None = None) -> ssl.SSLContext:
    """A server context with the modern defaults above and no certificate yet.

    Raises:
        ConfigError: unknown ``min_version`` or an unreadable client CA file.
    """
    pem = None
    if client_ca is not None:
        try:
            pem = read_client_ca(client_ca)
        except CertificateError as exc:
            raise ConfigError(f"cannot load client CA: {exc}", source=client_ca) from exc
    return _new_context(min_version, pem)


_Signature = tuple[int, int, int]


def _file_signature(path: str) -> _Signature:
    try:
        st = os.stat(path)
    except OSError:
        return (0, 0, 0)
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _signature(pair: CertPair) -> tuple[_Signature, ...]:
    return (_file_signature(pair.cert), _file_signature(pair.key))


@dataclass(frozen=True, slots=True)
class ReloadResult:
    """Which pairs were loaded anew and which were refused (with the reason).

    Attributes:
        loaded: pairs now served from their new files.
        refused: pairs whose new files could not be loaded, with the reason.
        client_ca_loaded: a changed client CA bundle is now trusted.
        client_ca_refused: why a changed client CA bundle was refused, else None.
    """

    loaded: tuple[CertPair, ...]
    refused: tuple[tuple[CertPair, str], ...]
    client_ca_loaded: bool = False
    client_ca_refused: str | None = None


class CertificateStore:
    """The base context the listener uses and the per-name contexts behind SNI.

    Args:
        default: the pair for clients whose server name matches no ``sni`` pair.
        sni: pairs served to clients asking for one of their names.
        min_version: ``"1.2"`` or ``"1.3"``.
        client_ca: require and verify client certificates signed by this CA bundle.

    Raises:
        ConfigError: a pair or the client CA cannot be loaded at start (there is no old one
            to keep).
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
        self._ca_pem: str | None = None
        self._ca_signature: _Signature | None = None
        if client_ca is not None:
            self._ca_signature = _file_signature(client_ca)
            try:
                self._ca_pem = read_client_ca(client_ca)
            except CertificateError as exc:
                raise ConfigError(f"cannot load client CA: {exc}", source=client_ca) from exc
        self.context = _new_context(min_version, self._ca_pem)
        self._listener_ca = self._ca_pem  # the listener context's trust store (fixed)
        # The context serving each pair now (the default's is the listener's own until the
        # client CA changes) and the last certificate and key each pair was served from.
        self._contexts: dict[CertPair, ssl.SSLContext] = {}
        self._material: dict[CertPair, tuple[bytes, bytes]] = {}
        self._signatures: dict[CertPair, tuple[_Signature, ...]] = {}
        for pair in [default, *self.sni]:
            try:
                self._load(pair)
            except CertificateError as exc:
                raise ConfigError(str(exc), source=pair.cert) from exc
        self.context.sni_callback = self._choose

    @staticmethod
    def _read(pair: CertPair) -> tuple[bytes, bytes]:
        try:
            return Path(pair.cert).read_bytes(), Path(pair.key).read_bytes()
        except OSError as exc:
            raise CertificateError(f"cannot read {exc.filename}: {exc.strerror}") from exc

    def _build(self, pair: CertPair, material: tuple[bytes, bytes]) -> ssl.SSLContext:
        """A context serving ``material`` (cert, key) with the current client CA."""
        scratch = _new_context(self.min_version, self._ca_pem)
        folder = Path(tempfile.mkdtemp(prefix="podkit-tls-"))  # mode 0700: it holds a key
        try:
            cert, key = folder / "cert.pem", folder / "key.pem"
            cert.write_bytes(material[0])
            key.write_bytes(material[1])
            try:
                scratch.load_cert_chain(cert, key)
            except ssl.SSLError as exc:
                reason = _READABLE_REASONS.get(str(exc.reason), str(exc.reason or exc))
                raise CertificateError(f"{pair.cert} / {pair.key}: {reason}") from exc
            if self._contexts.get(pair) is self.context and self._ca_pem == self._listener_ca:
                # Served by the listener's own context, whose trust store is still current:
                # load the pair just proven good into it (no context switch per handshake).
                self.context.load_cert_chain(cert, key)
                return self.context
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return scratch

    def _load(self, pair: CertPair) -> None:
        signature = _signature(pair)
        material = self._read(pair)
        if pair == self.default and pair not in self._contexts:
            self._contexts[pair] = self.context  # at start: served by the listener's context
        self._contexts[pair] = self._build(pair, material)
        self._material[pair] = material
        self._signatures[pair] = signature

    def _choose(self, sslobj: ssl.SSLObject, server_name: str | None, base: ssl.SSLContext) -> None:
        target = self._contexts[self.default]
        if server_name is not None:
            for pair in self.sni:
                if any(name_matches(pattern, server_name) for pattern in pair.names):
                    target = self._contexts.get(pair, base)
                    break
        if target is not base:
            sslobj.context = target

    def changed(self) -> list[CertPair]:
        """The pairs whose files changed on disk since they were last loaded (or tried)."""
        return [p for p in [self.default, *self.sni] if _signature(p) != self._signatures.get(p)]

    def client_ca_changed(self) -> bool:
        """Whether the client CA file changed on disk since it was last loaded (or tried)."""
        return self.client_ca is not None and _file_signature(self.client_ca) != self._ca_signature

    def _reload_client_ca(self) -> tuple[bool, str | None]:
        assert self.client_ca is not None
        self._ca_signature = _file_signature(self.client_ca)
        try:
            pem = read_client_ca(self.client_ca)
        except CertificateError as exc:
            return False, str(exc)
        if pem == self._ca_pem:
            return False, None
        self._ca_pem = pem
        return True, None

    def reload(self, *, force: bool = False) -> ReloadResult:
        """Load every pair whose files changed (every pair with ``force``, as on SIGHUP),
        and the client CA bundle if it changed (read again with ``force``).

        A pair that fails to load is refused and the certificate it would have replaced is
        still served; its current file signature is remembered so the same broken files are
        not retried until they change again. A client CA bundle that fails is refused alike
        and the previous one stays trusted. A new bundle applies to every pair at once, those
        whose new files were refused included (with their last good certificate).
        """
        ca_loaded, ca_refused = False, None
        if self.client_ca is not None and (force or self.client_ca_changed()):
            ca_loaded, ca_refused = self._reload_client_ca()
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
        if ca_loaded:
            for pair in [self.default, *self.sni]:
                if pair in loaded:
                    continue
                try:
                    # Proven good with the previous bundle; the new one was checked on its own.
                    self._contexts[pair] = self._build(pair, self._material[pair])
                except CertificateError as exc:  # pragma: no cover - the same bytes loaded before
                    refused.append((pair, str(exc)))
        return ReloadResult(tuple(loaded), tuple(refused), ca_loaded, ca_refused)
