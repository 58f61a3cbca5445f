"""``podkit tls`` in front of ``podkit whoami``: HTTPS, SNI, mutual TLS, reloads, redirects."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from podkit.testing import PodkitProcess, free_port, wait_http, wait_port
from podkit.testing.net import wait_for

from .pki import Issued, TestCA
from .procnet import server_pid


@pytest.fixture
def ca(tmp_path: Path) -> TestCA:
    return TestCA(tmp_path)


@pytest.fixture
def whoami() -> Iterator[int]:
    port = free_port()
    with PodkitProcess("whoami", "--listen", f"127.0.0.1:{port}", "--name", "legacy"):
        wait_port("127.0.0.1", port)
        yield port


def client_context(ca: TestCA, client: Issued | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca.path))
    context.set_alpn_protocols(["http/1.1"])
    if client is not None:
        context.load_cert_chain(str(client.cert), str(client.key))
    return context


class LoopbackHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to 127.0.0.1 asking for ``server_name`` (SNI and certificate check)."""

    def __init__(self, port: int, context: ssl.SSLContext, server_name: str) -> None:
        super().__init__(server_name, port, context=context, timeout=5)
        self.tls_context = context

    def connect(self) -> None:
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=self.timeout)
        self.sock = self.tls_context.wrap_socket(raw, server_hostname=self.host)


def connect(
    port: int, context: ssl.SSLContext, server_name: str = "127.0.0.1"
) -> http.client.HTTPSConnection:
    return LoopbackHTTPSConnection(port, context, server_name)


def get(
    conn: http.client.HTTPSConnection, path: str = "/", **headers: str
) -> tuple[int, dict[str, object]]:
    conn.request("GET", path, headers=headers)
    response = conn.getresponse()
    body = response.read()
    return response.status, json.loads(body) if body.startswith(b"{") else {}


def lower_keys(headers: object) -> dict[str, str]:
    assert isinstance(headers, dict)
    return {str(k).lower(): str(v) for k, v in headers.items()}


def served_serial(conn: http.client.HTTPSConnection) -> int:
    sock = conn.sock
    assert isinstance(sock, ssl.SSLSocket)
    der = sock.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def tls_process(port: int, upstream: int, pair: Issued, *extra: str) -> PodkitProcess:
    return PodkitProcess(
        "tls",
        "--listen", f"127.0.0.1:{port}",
        "--cert", str(pair.cert),
        "--key", str(pair.key),
        "--upstream", f"http://127.0.0.1:{upstream}",
        "--reload-check", "100ms",
        *extra,
    )  # fmt: skip


def test_whoami_is_answered_over_https_with_forwarded_proto(ca: TestCA, whoami: int) -> None:
    """A request over TLS reaches the plain-HTTP app, which sees X-Forwarded-Proto: https."""
    server = ca.issue("server", common_name="localhost", dns=("localhost",))
    port = free_port()
    with tls_process(port, whoami, server):
        wait_port("127.0.0.1", port)
        conn = connect(port, client_context(ca))
        status, body = get(conn, "/hello", **{"X-Client-Cert-Subject": "CN=forged"})
        assert status == 200
        assert body["name"] == "legacy"
        headers = lower_keys(body["headers"])
        assert headers["x-forwarded-proto"] == "https"
        assert "x-client-cert-subject" not in headers  # no client certificate: no subject
        sock = conn.sock
        assert isinstance(sock, ssl.SSLSocket)
        assert sock.version() in ("TLSv1.2", "TLSv1.3")
        assert sock.selected_alpn_protocol() == "http/1.1"
        conn.close()


def test_a_swapped_certificate_serves_new_connections_while_an_old_one_keeps_working(
    ca: TestCA, whoami: int, tmp_path: Path
) -> None:
    """Renewed on disk: new connections get it; a kept-alive connection carries on; a
    broken pair afterwards is refused with a log line and the renewed one stays."""
    live = ca.issue("live", common_name="localhost", dns=("localhost",))
    first_serial = live.serial
    port = free_port()
    with tls_process(port, whoami, live) as proc:
        wait_port("127.0.0.1", port)
        old = connect(port, client_context(ca))
        assert get(old)[0] == 200
        assert served_serial(old) == first_serial

        renewed = ca.issue("renewed", common_name="localhost", dns=("localhost",))
        shutil.copyfile(renewed.key, live.key)
        shutil.copyfile(renewed.cert, live.cert)

        def new_connection_serial() -> int:
            conn = connect(port, client_context(ca))
            try:
                get(conn)
                return served_serial(conn)
            finally:
                conn.close()

        wait_for(lambda: new_connection_serial() == renewed.serial, timeout=10, what="renewal")
        assert get(old)[0] == 200  # the old keep-alive connection still answers
        assert served_serial(old) == first_serial

        mismatched = ca.issue("mismatched", common_name="localhost", dns=("localhost",))
        shutil.copyfile(mismatched.cert, live.cert)  # the key stays the renewed one's
        wait_for(lambda: "new certificate refused" in proc.output(), timeout=10)
        assert new_connection_serial() == renewed.serial
        old.close()


def test_sighup_reloads_the_certificates(ca: TestCA, whoami: int) -> None:
    """SIGHUP loads the pair on disk at once."""
    live = ca.issue("live", common_name="localhost")
    port = free_port()
    with tls_process(port, whoami, live, "--reload-check", "1h") as proc:
        wait_port("127.0.0.1", port)
        renewed = ca.issue("renewed", common_name="localhost")
        shutil.copyfile(renewed.key, live.key)
        shutil.copyfile(renewed.cert, live.cert)
        proc.signal(signal.SIGHUP)

        def serial() -> int:
            conn = connect(port, client_context(ca))
            get(conn)
            number = served_serial(conn)
            conn.close()
            return number

        wait_for(lambda: serial() == renewed.serial, timeout=10, what="SIGHUP reload")


def test_mutual_tls_refuses_a_client_without_a_certificate_and_passes_the_subject(
    ca: TestCA, whoami: int
) -> None:
    """With --client-ca: no certificate, no answer; with one, its subject goes upstream."""
    server = ca.issue("server", common_name="localhost")
    client = ca.issue("client", common_name="client-1", client=True, organization="Shop")
    port = free_port()
    with tls_process(port, whoami, server, "--client-ca", str(ca.path)):
        wait_port("127.0.0.1", port)
        anonymous = connect(port, client_context(ca))
        with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException)):
            get(anonymous)
        anonymous.close()
        conn = connect(port, client_context(ca, client))
        status, body = get(conn, **{"X-Client-Cert-Subject": "CN=forged"})
        assert status == 200
        headers = lower_keys(body["headers"])
        # RFC 4514 order: the last RDN of the certificate first (this one lists CN, then O).
        assert headers["x-client-cert-subject"] == "O=Shop,CN=client-1"
        conn.close()


def answered(port: int, context: ssl.SSLContext) -> bool:
    """Whether a new connection with ``context`` gets a 200 (False: refused by the handshake)."""
    conn = connect(port, context)
    try:
        return get(conn)[0] == 200
    except (ssl.SSLError, ConnectionError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def test_a_replaced_client_ca_is_trusted_without_a_restart_and_a_broken_one_is_refused(
    ca: TestCA, whoami: int, tmp_path: Path
) -> None:
    """--client-ca is reloaded like the certificate: clients of the new CA get in, those of
    the old one no longer do, an open connection carries on; a broken bundle is refused with
    a log line and the previous CA stays trusted."""
    server = ca.issue("server", common_name="localhost")
    old_ca, new_ca = TestCA(tmp_path, "old clients"), TestCA(tmp_path, "new clients")
    old_client = old_ca.issue("old-client", common_name="old", client=True)
    new_client = new_ca.issue("new-client", common_name="new", client=True)
    bundle = tmp_path / "clients.pem"
    shutil.copyfile(old_ca.path, bundle)
    port, admin = free_port(), free_port()
    with tls_process(
        port, whoami, server, "--client-ca", str(bundle), "--admin", f"127.0.0.1:{admin}"
    ) as proc:
        wait_port("127.0.0.1", port)
        kept = connect(port, client_context(ca, old_client))
        assert get(kept)[0] == 200
        assert not answered(port, client_context(ca, new_client))

        shutil.copyfile(new_ca.path, bundle)
        wait_for(lambda: answered(port, client_context(ca, new_client)), timeout=10, what="new CA")
        assert not answered(port, client_context(ca, old_client))
        assert "client CA loaded" in proc.output()
        status, body = get(kept)  # verified before the change: it keeps working
        assert status == 200
        assert lower_keys(body["headers"])["x-client-cert-subject"] == "CN=old"

        bundle.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n")  # half written
        wait_for(lambda: "new client CA refused" in proc.output(), timeout=10, what="refusal")
        assert answered(port, client_context(ca, new_client))
        assert not answered(port, client_context(ca, old_client))
        metrics = http.client.HTTPConnection("127.0.0.1", admin, timeout=5)
        metrics.request("GET", "/metrics")
        text = metrics.getresponse().read().decode()
        metrics.close()
        assert 'tls_client_ca_reloads_total{result="loaded"} 1.0' in text
        assert 'tls_client_ca_reloads_total{result="refused"} 1.0' in text

        shutil.copyfile(old_ca.path, bundle)
        proc.signal(signal.SIGHUP)
        wait_for(lambda: answered(port, client_context(ca, old_client)), timeout=10, what="old CA")
        kept.close()


def test_sni_serves_each_name_its_own_certificate(ca: TestCA, whoami: int) -> None:
    """--sni pairs are chosen by the name the client asks for; others get the default."""
    default = ca.issue("default", common_name="localhost", dns=("localhost",))
    api = ca.issue("api", common_name="api.example.test", dns=("api.example.test",))
    port = free_port()
    sni = f"api.example.test={api.cert},{api.key}"
    with tls_process(port, whoami, default, "--sni", sni):
        wait_port("127.0.0.1", port)
        for name, expected in (("api.example.test", api.serial), ("localhost", default.serial)):
            conn = connect(port, client_context(ca), server_name=name)
            assert get(conn)[0] == 200
            assert served_serial(conn) == expected
            conn.close()


def test_the_plain_listener_redirects_to_https(ca: TestCA, whoami: int) -> None:
    """--redirect-from answers 308 with the same path and query on the HTTPS port."""
    server = ca.issue("server", common_name="localhost")
    port, plain = free_port(), free_port()
    with tls_process(port, whoami, server, "--redirect-from", f"127.0.0.1:{plain}"):
        wait_port("127.0.0.1", plain)
        conn = http.client.HTTPConnection("127.0.0.1", plain, timeout=5)
        conn.request("GET", "/a/b?c=1", headers={"Host": "shop.test:8080"})
        response = conn.getresponse()
        response.read()
        assert response.status == 308
        assert response.getheader("Location") == f"https://shop.test:{port}/a/b?c=1"
        conn.close()


def test_a_broken_pair_at_start_is_a_one_line_error(ca: TestCA, whoami: int) -> None:
    """A key that does not match its certificate stops the start with exit 2 and one line."""
    one = ca.issue("one", common_name="localhost")
    two = ca.issue("two", common_name="localhost")
    broken = Issued(one.cert, two.key, one.serial)
    with tls_process(free_port(), whoami, broken) as proc:
        assert proc.wait(20) == 2
        assert "does not match the certificate" in proc.output()
        assert "Traceback" not in proc.output()


def test_two_workers_share_the_port_and_both_answer(ca: TestCA, whoami: int) -> None:
    """--workers 2: one admin endpoint, ready once both workers are; requests are answered."""
    server = ca.issue("server", common_name="localhost")
    port, admin = free_port(), free_port()
    with tls_process(port, whoami, server, "--workers", "2", "--admin", f"127.0.0.1:{admin}"):
        wait_http("127.0.0.1", admin, "/readyz", timeout=30)
        for _ in range(10):
            conn = connect(port, client_context(ca))
            assert get(conn)[0] == 200
            conn.close()


def worker_pids(proc: PodkitProcess) -> list[int]:
    """The pids of the workers the parent started (from its ``worker started`` log lines)."""
    return [
        int(json.loads(line)["pid"])
        for line in proc.output().splitlines()
        if line.startswith("{") and '"worker started"' in line
    ]


def serial_by_worker(port: int, ca: TestCA, pids: list[int]) -> tuple[int, int]:
    """One new connection: the worker that accepted it and the certificate it was served."""
    conn = connect(port, client_context(ca))
    try:
        assert get(conn)[0] == 200
        sock = conn.sock
        assert isinstance(sock, socket.socket)
        pid = server_pid(sock, pids)
        assert pid is not None, "no worker holds the connection"
        return pid, served_serial(conn)
    finally:
        conn.close()


def wait_every_worker_serves(port: int, ca: TestCA, pids: list[int], serial: int) -> None:
    """New connections until each worker has been seen serving ``serial``."""
    seen: set[int] = set()

    def every_worker_serves() -> bool:
        pid, served = serial_by_worker(port, ca, pids)
        if served == serial:
            seen.add(pid)
        return seen == set(pids)

    wait_for(every_worker_serves, timeout=20, what=f"both workers serve {serial}")


def test_sighup_and_admin_reload_reach_every_worker(ca: TestCA, whoami: int) -> None:
    """With --workers 2 and the file check at 1h, SIGHUP to the parent (then an admin
    POST /reload) makes both workers serve the certificate now on disk to new connections."""
    live = ca.issue("live", common_name="localhost")
    port, admin = free_port(), free_port()
    with tls_process(
        port, whoami, live, "--workers", "2", "--reload-check", "1h",
        "--admin", f"127.0.0.1:{admin}",
    ) as proc:  # fmt: skip
        wait_http("127.0.0.1", admin, "/readyz", timeout=30)
        pids = worker_pids(proc)
        assert len(pids) == 2
        assert proc.pid not in pids
        wait_every_worker_serves(port, ca, pids, live.serial)

        renewed = ca.issue("renewed", common_name="localhost")
        shutil.copyfile(renewed.key, live.key)
        shutil.copyfile(renewed.cert, live.cert)
        proc.signal(signal.SIGHUP)
        wait_every_worker_serves(port, ca, pids, renewed.serial)

        again = ca.issue("again", common_name="localhost")
        shutil.copyfile(again.key, live.key)
        shutil.copyfile(again.cert, live.cert)
        reload = http.client.HTTPConnection("127.0.0.1", admin, timeout=5)
        reload.request("POST", "/reload")
        assert reload.getresponse().status == 200
        reload.close()
        wait_every_worker_serves(port, ca, pids, again.serial)
        assert worker_pids(proc) == pids  # reloaded in place: no worker was restarted
        assert all(os.path.exists(f"/proc/{pid}") for pid in pids)


def test_a_sighup_while_the_workers_start_does_not_end_any_of_them(ca: TestCA, whoami: int) -> None:
    """SIGHUP right after the parent starts its workers (before they can handle it) is held
    for each worker until it runs: none is ended by the signal's default action."""
    server = ca.issue("server", common_name="localhost")
    port, admin = free_port(), free_port()
    with tls_process(
        port, whoami, server, "--workers", "2", "--admin", f"127.0.0.1:{admin}"
    ) as proc:
        wait_for(lambda: "starting workers" in proc.output(), timeout=20)
        proc.signal(signal.SIGHUP)
        wait_http("127.0.0.1", admin, "/readyz", timeout=30)
        wait_for(
            lambda: proc.output().count("reload sent to worker") == 2, timeout=10, what="reloads"
        )
        assert answered(port, client_context(ca))
        output = proc.output()
        assert "worker exited" not in output
        assert len(worker_pids(proc)) == 2


def _closed_by_server(sock: socket.socket) -> bool:
    """Whether the server closed ``sock`` (EOF or reset) instead of leaving it open."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except (TimeoutError, BlockingIOError):
        return False


def test_silent_clients_count_from_accept_and_are_closed_after_the_handshake_timeout(
    ca: TestCA, whoami: int
) -> None:
    """300 clients that send nothing (or half a ClientHello) to --max-connections 50: those
    beyond 50 are closed at once, the rest at --handshake-timeout; HTTPS works again after."""
    pair = ca.issue("server", common_name="localhost", dns=("localhost",))
    port, admin = free_port(), free_port()
    with tls_process(
        port, whoami, pair, "--max-connections", "50", "--handshake-timeout", "1s",
        "--admin", f"127.0.0.1:{admin}",
    ) as proc:  # fmt: skip
        wait_http("127.0.0.1", admin, "/readyz")
        silent = []
        for index in range(300):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            if index % 2:
                sock.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # half a hello
            silent.append(sock)
        wait_http("127.0.0.1", admin, "/healthz")  # the admin endpoint stays reachable
        for sock in silent:
            sock.settimeout(0.05)
        # Past the first 50 every client is refused at accept.
        wait_for(lambda: sum(_closed_by_server(s) for s in silent[60:]) == 240, timeout=5)
        start = time.monotonic()
        for sock in silent[:50]:
            sock.settimeout(10)
            assert _closed_by_server(sock)
        assert time.monotonic() - start < 8, "held past --handshake-timeout"
        for sock in silent:
            sock.close()
        conn = connect(port, client_context(ca), "localhost")
        assert get(conn)[0] == 200
        conn.close()
        scrape = http.client.HTTPConnection("127.0.0.1", admin, timeout=5)
        scrape.request("GET", "/metrics")
        metrics = scrape.getresponse().read().decode()
        scrape.close()
        assert 'reason="tls_handshake_timeout"' in metrics
        assert 'reason="max_connections"' in metrics
        assert "TLS handshake failed" in proc.output()


def test_handshake_timeout_must_be_positive(ca: TestCA, whoami: int) -> None:
    pair = ca.issue("server", common_name="localhost", dns=("localhost",))
    proc = tls_process(free_port(), whoami, pair, "--handshake-timeout", "0s")
    with proc:
        assert proc.wait(timeout=20) == 2
        assert "--handshake-timeout" in proc.output()
