"""TLS contexts: modern defaults, SNI, mutual TLS and reloads that never serve a broken pair."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import ssl
import threading
import warnings
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography import x509

from podkit.errors import ConfigError
from podkit.sidecar.tls._context import (
    CertificateStore,
    CertPair,
    name_matches,
    parse_sni,
    subject_text,
)

from .pki import TestCA


@pytest.fixture
def ca(tmp_path: Path) -> TestCA:
    return TestCA(tmp_path)


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    data = await reader.read(100)
    writer.write(data)
    await writer.drain()
    writer.close()


async def serve(store: CertificateStore) -> AsyncIterator[int]:
    server = await asyncio.start_server(_echo, "127.0.0.1", 0, ssl=store.context)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture
def default_store(ca: TestCA) -> CertificateStore:
    issued = ca.issue("default", common_name="default.test", dns=("default.test",))
    return CertificateStore(CertPair(str(issued.cert), str(issued.key)))


def client_context(
    ca: TestCA, *, cert: Path | None = None, key: Path | None = None
) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca.path))
    context.set_alpn_protocols(["http/1.1"])
    if cert is not None:
        context.load_cert_chain(str(cert), str(key))
    return context


async def handshake(
    port: int, context: ssl.SSLContext, server_name: str | None = None
) -> tuple[int, ssl.SSLObject]:
    """Connect, exchange one message, and return the served certificate's serial."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=context, server_hostname=server_name or "127.0.0.1"
    )
    try:
        writer.write(b"ping")
        await writer.drain()
        assert await reader.read(100) == b"ping"
        sslobj = writer.get_extra_info("ssl_object")
        der = sslobj.getpeercert(binary_form=True)
        return x509.load_der_x509_certificate(der).serial_number, sslobj
    finally:
        writer.close()


async def test_the_defaults_are_modern_and_alpn_is_http11(
    ca: TestCA, default_store: CertificateStore
) -> None:
    async for port in serve(default_store):
        _, sslobj = await handshake(port, client_context(ca))
        assert sslobj.version() in ("TLSv1.2", "TLSv1.3")
        assert sslobj.selected_alpn_protocol() == "http/1.1"
        assert sslobj.compression() is None
        old = client_context(ca)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # a TLS 1.1 client on purpose
            old.minimum_version = ssl.TLSVersion.TLSv1
            old.maximum_version = ssl.TLSVersion.TLSv1_1
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await handshake(port, old)
        static_rsa = client_context(ca)
        static_rsa.maximum_version = ssl.TLSVersion.TLSv1_2
        static_rsa.set_ciphers("AES128-GCM-SHA256:AES256-SHA")  # no forward secrecy
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await handshake(port, static_rsa)


async def test_sni_serves_the_pair_for_the_name_and_the_default_otherwise(ca: TestCA) -> None:
    default = ca.issue("default", common_name="default.test", dns=("default.test",))
    api = ca.issue("api", common_name="api.example.test", dns=("api.example.test",))
    wild = ca.issue("wild", common_name="*.shop.test", dns=("*.shop.test",))
    store = CertificateStore(
        CertPair(str(default.cert), str(default.key)),
        [
            parse_sni(f"api.example.test={api.cert},{api.key}"),
            parse_sni(f"*.shop.test={wild.cert},{wild.key}"),
        ],
    )
    async for port in serve(store):
        assert (await handshake(port, client_context(ca), "api.example.test"))[0] == api.serial
        assert (await handshake(port, client_context(ca), "www.shop.test"))[0] == wild.serial
        assert (await handshake(port, client_context(ca), "default.test"))[0] == default.serial
        assert (await handshake(port, client_context(ca)))[0] == default.serial


async def test_a_swapped_pair_is_served_to_new_connections_and_a_broken_one_is_refused(
    ca: TestCA, default_store: CertificateStore, tmp_path: Path
) -> None:
    async for port in serve(default_store):
        first, _ = await handshake(port, client_context(ca))
        renewed = ca.issue("renewed", common_name="default.test", dns=("default.test",))
        shutil.copyfile(renewed.cert, default_store.default.cert)
        shutil.copyfile(renewed.key, default_store.default.key)
        assert default_store.changed() == [default_store.default]
        result = default_store.reload()
        assert result.loaded == (default_store.default,)
        assert (await handshake(port, client_context(ca)))[0] == renewed.serial != first

        # A certificate whose key does not match: refused, the renewed pair stays.
        other = ca.issue("other", common_name="x.test", dns=("x.test",))
        shutil.copyfile(other.cert, default_store.default.cert)
        result = default_store.reload()
        assert result.loaded == ()
        assert len(result.refused) == 1
        assert "the private key does not match the certificate" in result.refused[0][1]
        assert (await handshake(port, client_context(ca)))[0] == renewed.serial
        assert default_store.changed() == []  # the broken files are not retried until they change


async def test_mutual_tls_refuses_a_client_without_a_certificate(
    ca: TestCA, tmp_path: Path
) -> None:
    server = ca.issue("server", common_name="server.test", dns=("server.test",))
    client = ca.issue("client", common_name="client-1", client=True, organization="Shop")
    store = CertificateStore(CertPair(str(server.cert), str(server.key)), client_ca=str(ca.path))
    async for port in serve(store):
        with pytest.raises((ssl.SSLError, ConnectionError, AssertionError)):
            await handshake(port, client_context(ca))
        with_cert = client_context(ca, cert=client.cert, key=client.key)
        assert (await handshake(port, with_cert))[0] == server.serial


def test_a_pair_that_cannot_load_at_start_is_a_config_error(ca: TestCA, tmp_path: Path) -> None:
    one = ca.issue("one", common_name="one.test")
    two = ca.issue("two", common_name="two.test")
    with pytest.raises(ConfigError, match=r"one\.crt"):
        CertificateStore(CertPair(str(one.cert), str(two.key)))
    with pytest.raises(ConfigError):
        CertificateStore(CertPair(str(tmp_path / "missing.crt"), str(one.key)))


def test_sni_names_wildcards_and_subjects() -> None:
    pair = parse_sni("A.example.test|b.example.test=/c.pem,/k.pem")
    assert pair == CertPair("/c.pem", "/k.pem", ("a.example.test", "b.example.test"))
    with pytest.raises(ConfigError):
        parse_sni("no-files")
    assert name_matches("*.shop.test", "www.shop.test")
    assert not name_matches("*.shop.test", "a.b.shop.test")
    assert not name_matches("*.shop.test", "shop.test")
    assert name_matches("api.test", "API.test.")
    cert = {"subject": ((("organizationName", "Shop, Inc"),), (("commonName", "client-1"),))}
    assert subject_text(cert) == "CN=client-1,O=Shop\\, Inc"
    assert subject_text(None) is None


def test_a_client_ca_that_disappears_is_refused_and_the_pairs_still_reload(
    ca: TestCA, tmp_path: Path
) -> None:
    """A reload that cannot read the client CA any more refuses the CA, not the pairs."""
    server = ca.issue("server", common_name="server.test")
    bundle = tmp_path / "clients.pem"
    shutil.copyfile(ca.path, bundle)
    store = CertificateStore(CertPair(str(server.cert), str(server.key)), client_ca=str(bundle))
    bundle.unlink()
    assert store.client_ca_changed()
    result = store.reload(force=True)
    assert result.loaded == (store.default,)
    assert not result.client_ca_loaded
    assert result.client_ca_refused is not None
    assert "cannot read client CA" in result.client_ca_refused
    assert not store.client_ca_changed()  # not retried until the file changes again


async def accepts(port: int, context: ssl.SSLContext, server_name: str | None = None) -> bool:
    """Whether a client with ``context`` gets an answer (a refused client certificate shows
    in the handshake with TLS 1.2, on the first read with TLS 1.3)."""
    try:
        await handshake(port, context, server_name)
    except (ssl.SSLError, ConnectionError, AssertionError):
        return False
    return True


async def test_a_changed_client_ca_is_trusted_at_once_and_a_broken_one_is_refused(
    ca: TestCA, tmp_path: Path
) -> None:
    """A new client CA bundle replaces the old one for every pair (SNI ones too); a bundle
    that is broken is refused and the previous one stays trusted."""
    server = ca.issue("server", common_name="server.test", dns=("server.test",))
    api = ca.issue("api", common_name="api.test", dns=("api.test",))
    old_ca, new_ca = TestCA(tmp_path, "old clients"), TestCA(tmp_path, "new clients")
    old_client = old_ca.issue("old-client", common_name="old", client=True)
    new_client = new_ca.issue("new-client", common_name="new", client=True)
    as_old = client_context(ca, cert=old_client.cert, key=old_client.key)
    as_new = client_context(ca, cert=new_client.cert, key=new_client.key)
    bundle = tmp_path / "clients.pem"
    shutil.copyfile(old_ca.path, bundle)
    store = CertificateStore(
        CertPair(str(server.cert), str(server.key)),
        [parse_sni(f"api.test={api.cert},{api.key}")],
        client_ca=str(bundle),
    )
    async for port in serve(store):
        assert await accepts(port, as_old)
        assert not await accepts(port, as_new)

        shutil.copyfile(new_ca.path, bundle)
        assert store.client_ca_changed()
        result = store.reload()
        assert result.client_ca_loaded
        assert result.loaded == result.refused == ()
        for name in (None, "api.test"):
            assert await accepts(port, as_new, name)
            assert not await accepts(port, as_old, name)
        assert (await handshake(port, as_new, "api.test"))[0] == api.serial

        bundle.write_text(new_ca.path.read_text()[:100])  # a half-written bundle
        result = store.reload()
        assert not result.client_ca_loaded
        assert result.client_ca_refused is not None
        assert "no PEM certificate found" in result.client_ca_refused
        assert await accepts(port, as_new)
        assert not await accepts(port, as_old)

        # A renewed pair after the change is served with the CA trusted now.
        renewed = ca.issue("renewed", common_name="server.test", dns=("server.test",))
        shutil.copyfile(renewed.cert, server.cert)
        shutil.copyfile(renewed.key, server.key)
        assert store.reload().loaded == (store.default,)
        assert (await handshake(port, as_new))[0] == renewed.serial
        assert not await accepts(port, as_old)

        # SIGHUP's forced reload reads the bundle again: the old CA comes back.
        shutil.copyfile(old_ca.path, bundle)
        assert store.reload(force=True).client_ca_loaded
        assert await accepts(port, as_old)
        assert not await accepts(port, as_new)


def test_a_broken_client_ca_at_start_is_a_config_error(ca: TestCA, tmp_path: Path) -> None:
    server = ca.issue("server", common_name="server.test")
    bundle = tmp_path / "clients.pem"
    bundle.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match="no PEM certificate found"):
        CertificateStore(CertPair(str(server.cert), str(server.key)), client_ca=str(bundle))


def resume(context: ssl.SSLContext, port: int, session: ssl.SSLSession | None) -> None:
    """Connect with ``session`` and exchange one message (raises when refused)."""
    raw = socket.create_connection(("127.0.0.1", port))
    tls: ssl.SSLSocket | None = None
    try:
        tls = context.wrap_socket(raw, session=session)
        tls.sendall(b"hi")
        if tls.recv(10) != b"hi":
            raise ConnectionResetError("closed without an answer")
    finally:
        (tls or raw).close()


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_a_session_from_before_a_client_ca_change_is_not_resumed(
    ca: TestCA, tmp_path: Path, version: ssl.TLSVersion
) -> None:
    """A client of a CA taken out of the bundle cannot come back by resuming its session."""
    server = ca.issue("server", common_name="server.test")
    old_ca, new_ca = TestCA(tmp_path, "old clients"), TestCA(tmp_path, "new clients")
    old_client = old_ca.issue("old-client", common_name="old", client=True)
    bundle = tmp_path / "clients.pem"
    shutil.copyfile(old_ca.path, bundle)
    store = CertificateStore(CertPair(str(server.cert), str(server.key)), client_ca=str(bundle))
    context = client_context(ca, cert=old_client.cert, key=old_client.key)
    context.maximum_version = version
    context.check_hostname = False
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        for _ in range(2):
            conn, _ = listener.accept()
            with contextlib.suppress(ssl.SSLError, OSError), conn:
                tls = store.context.wrap_socket(conn, server_side=True)
                tls.sendall(tls.recv(10))
                tls.close()

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        first = context.wrap_socket(socket.create_connection(("127.0.0.1", port)))
        first.sendall(b"hi")
        assert first.recv(10) == b"hi"
        session = first.session
        first.close()

        shutil.copyfile(new_ca.path, bundle)
        assert store.reload().client_ca_loaded
        with pytest.raises((ssl.SSLError, OSError)):
            resume(context, port, session)
    finally:
        thread.join(10)
        listener.close()
