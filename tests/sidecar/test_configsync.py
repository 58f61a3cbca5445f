"""``podkit configsync`` with a legacy app that reads its config at start and on SIGHUP."""

from __future__ import annotations

import base64
import email.utils
import hashlib
import json
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from podkit.testing import EtcdServer, PodkitProcess, ServerProcess, free_port, wait_http
from podkit.testing.net import wait_for

# The legacy application: it knows nothing of configsync. It reads its file at start and on
# SIGHUP and reports what it loaded (and how many times) in a JSON file.
LEGACY_APP = """
import json, os, signal, sys
config, pid_file, report = sys.argv[1:4]
loads = 0
def load(*_):
    global loads
    loads += 1
    with open(config) as f:
        text = f.read()
    with open(report + ".tmp", "w") as f:
        json.dump({"loads": loads, "config": text}, f)
    os.replace(report + ".tmp", report)
signal.signal(signal.SIGHUP, load)
load()
with open(pid_file + ".tmp", "w") as f:
    f.write(str(os.getpid()))
os.replace(pid_file + ".tmp", pid_file)
while True:
    signal.pause()
"""

TEMPLATE = "greeting = {{ greeting }}\nport = {{ port }}\n"
VALIDATOR = (
    "import sys; text = open(sys.argv[1]).read(); "
    "sys.exit(0 if 'greeting = ' in text and 'forbidden' not in text else 3)"
)


class ConfigServer:
    """A config endpoint with ETags (304 on If-None-Match) that can go down and come back."""

    def __init__(self) -> None:
        self.port = free_port()
        self.body = b"{}"
        self.etag_salt = 0
        self.validator = "etag"  # or "last-modified": the validator sent and checked
        self.modified: dict[bytes, str] = {}  # Last-Modified of each body served
        self.full_answers = 0
        self.not_modified = 0
        self.posts: list[dict[str, str]] = []
        self.long_poll = False
        self.held = 0
        self.stopping = False
        self.changed = threading.Condition()
        self.server: ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/config.json"

    def etag(self) -> str:
        return '"' + hashlib.sha256(self.body).hexdigest()[:16] + f'-{self.etag_salt}"'

    def last_modified(self) -> str:
        """An HTTP date for the current body, one second later for each new body."""
        if self.body not in self.modified:
            stamp = 1_700_000_000 + len(self.modified)
            self.modified[self.body] = email.utils.formatdate(stamp, usegmt=True)
        return self.modified[self.body]

    def unchanged_for(self, headers: Message) -> bool:
        if self.validator == "last-modified":
            return headers.get("If-Modified-Since") == self.last_modified()
        return headers.get("If-None-Match") == self.etag()

    def validator_headers(self) -> list[tuple[str, str]]:
        if self.validator == "last-modified":
            return [("Last-Modified", self.last_modified())]
        return [("ETag", self.etag())]

    def set_json(self, data: object) -> None:
        with self.changed:
            self.body = json.dumps(data).encode()
            self.changed.notify_all()

    def start(self) -> None:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                etag = owner.etag()
                prefer = self.headers.get("Prefer", "")
                if (
                    owner.long_poll
                    and prefer.startswith("wait=")
                    and (self.headers.get("If-None-Match") == etag)
                ):
                    # Long-poll: hold the request until the content changes or the wait ends.
                    owner.held += 1
                    with owner.changed:
                        owner.changed.wait_for(
                            lambda: owner.etag() != etag or owner.stopping,
                            timeout=float(prefer[5:]),
                        )
                    if owner.stopping:
                        # The server goes away: the held request ends without an answer.
                        self.close_connection = True
                        return
                    etag = owner.etag()
                if owner.unchanged_for(self.headers):
                    owner.not_modified += 1
                    self.send_response(304)
                    for name, value in owner.validator_headers():
                        self.send_header(name, value)
                    self.end_headers()
                    return
                owner.full_answers += 1
                self.send_response(200)
                for name, value in owner.validator_headers():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(owner.body)))
                self.end_headers()
                self.wfile.write(owner.body)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                owner.posts.append(json.loads(self.rfile.read(length)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                return

        self.stopping = False
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        """Stop like a server that goes away: held long-polls are cut, nothing listens."""
        with self.changed:
            self.stopping = True
            self.changed.notify_all()
        if self.server is not None and self.thread is not None:
            self.server.shutdown()
            self.server.server_close()
            self.thread.join()
            self.server = None


@pytest.fixture
def config_server() -> Iterator[ConfigServer]:
    server = ConfigServer()
    server.set_json({"greeting": "hello", "port": 8080})
    server.start()
    yield server
    server.stop()


def report(path: Path) -> dict[str, object]:
    try:
        data: dict[str, object] = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return data


def admin_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:  # not listening yet
        return 0, ""


def metric(port: int, name: str) -> float | None:
    """The value of an unlabelled sample on the admin endpoint's /metrics."""
    status, text = admin_get(port, "/metrics")
    if status != 200:
        return None
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def wait_backoff_at_cap(admin: int, cap: float) -> None:
    """Failures in a row keep coming and the retry delay has climbed to its cap."""
    wait_for(
        lambda: (metric(admin, "configsync_consecutive_failures") or 0) >= 4,
        timeout=20,
        what="four failed rounds in a row",
    )
    delay = metric(admin, "configsync_retry_delay_seconds")
    assert delay is not None
    assert 0.8 * cap <= delay <= 1.2 * cap  # the cap, ±20 % jitter
    assert metric(admin, "configsync_source_up") == 0.0


def wait_recovered(admin: int) -> None:
    """Rounds succeed again: no failure in a row, no retry delay, ready."""
    wait_for(
        lambda: (
            metric(admin, "configsync_consecutive_failures") == 0.0
            and metric(admin, "configsync_retry_delay_seconds") == 0.0
        ),
        timeout=20,
        what="the source to be read again",
    )
    assert metric(admin, "configsync_source_up") == 1.0
    wait_http("127.0.0.1", admin, "/readyz", timeout=10)


def legacy_app(tmp: Path) -> ServerProcess:
    script = tmp / "legacy_app.py"
    script.write_text(LEGACY_APP)
    argv = [sys.executable, str(script), str(tmp / "app.conf"), str(tmp / "app.pid")]
    return ServerProcess([*argv, str(tmp / "report.json")], name="legacy-app")


def configsync(tmp: Path, source: str, admin: int, *extra: str) -> PodkitProcess:
    (tmp / "app.conf.j2").write_text(TEMPLATE)
    return PodkitProcess(
        "configsync",
        "--source", source,
        "--dest", str(tmp / "app.conf"),
        "--template", str(tmp / "app.conf.j2"),
        "--validate", f"{sys.executable} -c \"{VALIDATOR}\" {{}}",
        "--admin", f"127.0.0.1:{admin}",
        *extra,
    )  # fmt: skip


def test_a_change_at_the_http_source_reaches_the_legacy_app_and_only_real_changes_do(
    tmp_path: Path, config_server: ConfigServer
) -> None:
    """The app reloads within 2 s of a change; a new ETag with the same content is no change."""
    admin = free_port()
    signal_args = ("--signal", "HUP", "--pid-file", str(tmp_path / "app.pid"))
    sync = configsync(tmp_path, config_server.url, admin, "--every", "200ms", *signal_args)
    with sync:
        wait_http("127.0.0.1", admin, "/readyz", timeout=20)
        assert (tmp_path / "app.conf").read_text() == "greeting = hello\nport = 8080\n"
        with legacy_app(tmp_path):
            wait_for(lambda: report(tmp_path / "report.json").get("loads") == 1, timeout=10)
            # Conditional GETs: an unchanged source answers 304.
            wait_for(lambda: config_server.not_modified >= 2, timeout=5, what="304 answers")

            config_server.set_json({"greeting": "bonjour", "port": 8080})
            wait_for(
                lambda: "bonjour" in str(report(tmp_path / "report.json").get("config")),
                timeout=2.0,
                what="the app to load the new greeting",
            )
            assert report(tmp_path / "report.json")["loads"] == 2

            # Same content under a new ETag: fetched again, but the app is not told.
            answers = config_server.full_answers
            config_server.etag_salt += 1
            wait_for(lambda: config_server.full_answers > answers, timeout=5)
            wait_for(lambda: config_server.not_modified >= 2 + 2, timeout=5)
            assert report(tmp_path / "report.json")["loads"] == 2
        status, body = admin_get(admin, "/configsync")
        assert status == 200
        assert json.loads(body)["changes"] == 2


def test_a_broken_or_missing_source_keeps_the_last_good_file(
    tmp_path: Path, config_server: ConfigServer
) -> None:
    """Invalid content, garbage and an outage each leave the file, and show in /readyz."""
    admin = free_port()
    dest = tmp_path / "app.conf"
    with configsync(tmp_path, config_server.url, admin, "--every", "100ms") as sync:
        wait_http("127.0.0.1", admin, "/readyz", timeout=20)
        good = dest.read_text()

        config_server.set_json({"greeting": "forbidden", "port": 1})
        wait_for(lambda: "validate" in admin_get(admin, "/readyz")[1], timeout=10)
        assert admin_get(admin, "/readyz")[0] == 503
        assert dest.read_text() == good

        config_server.body = b"<html>oops</html>"
        wait_for(lambda: "parse" in admin_get(admin, "/readyz")[1], timeout=10)
        assert dest.read_text() == good

        config_server.stop()
        wait_for(lambda: "fetch" in admin_get(admin, "/readyz")[1], timeout=10)
        assert dest.read_text() == good
        metrics = admin_get(admin, "/metrics")[1]
        assert 'configsync_failures_total{stage="fetch"}' in metrics
        assert 'configsync_failures_total{stage="validate"}' in metrics
        assert "configsync_source_up 0.0" in metrics

        config_server.set_json({"greeting": "back", "port": 2})
        config_server.start()
        wait_for(lambda: "greeting = back" in dest.read_text(), timeout=40, what="recovery")
        wait_http("127.0.0.1", admin, "/readyz", timeout=10)
        assert "sync failed; the last good file stays" in sync.output()


@pytest.mark.parametrize(
    ("validator", "stage", "rejected"),
    [
        ("etag", "validate", json.dumps({"greeting": "forbidden", "port": 1}).encode()),
        ("last-modified", "validate", json.dumps({"greeting": "forbidden", "port": 1}).encode()),
        ("etag", "render", json.dumps({"greeting": "no port"}).encode()),
        ("etag", "parse", b"<html>oops</html>"),
    ],
    ids=["validate-etag", "validate-last-modified", "render", "parse"],
)
def test_a_rejected_version_keeps_the_sidecar_unready_until_a_good_one_is_applied(
    tmp_path: Path, config_server: ConfigServer, validator: str, stage: str, rejected: bytes
) -> None:
    """The rejected version's ETag or Last-Modified is not sent back: every later round fetches
    it in full and fails again, so /readyz stays 503 and the counts stay truthful until the
    source serves a good version, which is then applied."""
    config_server.validator = validator
    admin = free_port()
    dest = tmp_path / "app.conf"
    with configsync(tmp_path, config_server.url, admin, "--every", "100ms", "--retry-max", "100ms"):
        wait_http("127.0.0.1", admin, "/readyz", timeout=20)
        good = dest.read_text()

        config_server.body = rejected
        wait_for(lambda: stage in admin_get(admin, "/readyz")[1], timeout=10, what=stage)
        answers = config_server.full_answers
        not_modified = config_server.not_modified
        wait_for(
            lambda: config_server.full_answers >= answers + 3,
            timeout=20,
            what="three more rounds fetching the rejected version",
        )
        assert config_server.not_modified == not_modified
        status, reason = admin_get(admin, "/readyz")
        assert status == 503
        assert f"keeping the last good config: {stage}" in reason
        assert (metric(admin, "configsync_consecutive_failures") or 0) >= 3
        assert metric(admin, "configsync_source_up") == 0.0
        assert f'configsync_failures_total{{stage="{stage}"}}' in admin_get(admin, "/metrics")[1]
        assert dest.read_text() == good

        config_server.set_json({"greeting": "fixed", "port": 3})
        wait_for(lambda: "greeting = fixed" in dest.read_text(), timeout=20, what="the fix")
        wait_recovered(admin)


def test_readiness_waits_for_the_first_good_file(tmp_path: Path) -> None:
    """With the source down from the start there is no file and /readyz says why."""
    admin = free_port()
    dead = f"http://127.0.0.1:{free_port()}/config.json"
    with configsync(tmp_path, dead, admin, "--every", "100ms"):
        wait_for(lambda: "no good config yet" in admin_get(admin, "/readyz")[1], timeout=20)
        assert admin_get(admin, "/readyz")[0] == 503
        assert not (tmp_path / "app.conf").exists()


def test_a_post_tells_the_application_of_each_change(
    tmp_path: Path, config_server: ConfigServer
) -> None:
    """--post sends the path and digest of the new file, once per change."""
    admin = free_port()
    post = f"http://127.0.0.1:{config_server.port}/reload"
    with configsync(tmp_path, config_server.url, admin, "--every", "100ms", "--post", post):
        wait_for(lambda: len(config_server.posts) == 1, timeout=20)
        config_server.set_json({"greeting": "again", "port": 1})
        wait_for(lambda: len(config_server.posts) == 2, timeout=10)
    digest = hashlib.sha256((tmp_path / "app.conf").read_bytes()).hexdigest()
    assert config_server.posts[-1] == {"path": str(tmp_path / "app.conf"), "sha256": digest}


def test_watch_mode_long_polls_a_server_that_holds_requests(
    tmp_path: Path, config_server: ConfigServer
) -> None:
    """With --watch the request waits at the server, so a change arrives at once even with a
    poll interval of a minute."""
    config_server.long_poll = True
    admin = free_port()
    dest = tmp_path / "app.conf"
    with configsync(tmp_path, config_server.url, admin, "--watch", "--every", "1m"):
        wait_http("127.0.0.1", admin, "/readyz", timeout=20)
        wait_for(lambda: config_server.held >= 1, timeout=10, what="a held request")
        config_server.set_json({"greeting": "pushed", "port": 1})
        wait_for(lambda: "pushed" in dest.read_text(), timeout=2.0, what="the pushed change")


def test_watch_mode_long_polls_again_after_the_server_restarts_and_backoff_shows(
    tmp_path: Path, config_server: ConfigServer
) -> None:
    """The long-poll server goes away with a request held: rounds fail with a growing retry
    delay (in metrics, up to --retry-max) and the last good file stays; once it is back the
    requests are held again and a change arrives at once."""
    config_server.long_poll = True
    admin = free_port()
    dest = tmp_path / "app.conf"
    args = ("--watch", "--every", "1m", "--retry-max", "1s")
    with configsync(tmp_path, config_server.url, admin, *args):
        wait_http("127.0.0.1", admin, "/readyz", timeout=20)
        good = dest.read_text()
        wait_for(lambda: config_server.held >= 1, timeout=10, what="a held request")
        config_server.stop()
        wait_backoff_at_cap(admin, cap=1.0)
        status, reason = admin_get(admin, "/readyz")
        assert status == 503
        assert "keeping the last good config: fetch" in reason
        assert dest.read_text() == good
        state = json.loads(admin_get(admin, "/configsync")[1])
        assert state["failures_in_a_row"] >= 4
        assert state["retry_delay"] > 0

        held = config_server.held
        config_server.start()
        wait_recovered(admin)
        wait_for(lambda: config_server.held > held, timeout=10, what="a held request again")
        config_server.set_json({"greeting": "after restart", "port": 1})
        wait_for(lambda: "after restart" in dest.read_text(), timeout=2.0, what="the change")


def etcd_put(etcd: EtcdServer, key: str, value: str) -> None:
    body = {
        "key": base64.b64encode(key.encode()).decode(),
        "value": base64.b64encode(value.encode()).decode(),
    }
    httpx.post(f"{etcd.endpoint}/v3/kv/put", json=body, timeout=5).raise_for_status()


def test_a_change_at_an_etcd_key_reaches_the_legacy_app_and_an_outage_keeps_the_file(
    tmp_path: Path, etcd_server: EtcdServer
) -> None:
    """Watched etcd key: the app reloads within 2 s; etcd killed: the file stays."""
    etcd_put(etcd_server, "app/config", json.dumps({"greeting": "hello", "port": 1}))
    admin = free_port()
    source = f"{etcd_server.url}/app/config"
    signal_args = ("--signal", "HUP", "--pid-file", str(tmp_path / "app.pid"))
    with configsync(tmp_path, source, admin, "--watch", *signal_args) as sync:
        wait_http("127.0.0.1", admin, "/readyz", timeout=20)
        with legacy_app(tmp_path):
            wait_for(lambda: report(tmp_path / "report.json").get("loads") == 1, timeout=10)
            etcd_put(etcd_server, "app/config", json.dumps({"greeting": "watched", "port": 2}))
            wait_for(
                lambda: "watched" in str(report(tmp_path / "report.json").get("config")),
                timeout=2.0,
                what="the app to load the value from etcd",
            )
            good = (tmp_path / "app.conf").read_text()
            etcd_server.kill()
            wait_for(lambda: "fetch" in admin_get(admin, "/readyz")[1], timeout=15)
            assert (tmp_path / "app.conf").read_text() == good
            assert report(tmp_path / "report.json")["loads"] == 2
            etcd_server.start()
            etcd_put(etcd_server, "app/config", json.dumps({"greeting": "after", "port": 3}))
            wait_for(
                lambda: "after" in str(report(tmp_path / "report.json").get("config")),
                timeout=40,
                what="the change made after etcd came back",
            )
        assert "config changed" in sync.output()


def test_an_etcd_watch_recovers_after_etcd_restarts_and_backoff_shows(
    tmp_path: Path, etcd_server: EtcdServer
) -> None:
    """etcd restarted: the watch is set up again and later changes arrive. etcd down for a
    while: the retry delay climbs to --retry-max in metrics and the file stays; back: the
    watch resumes and a change arrives at once."""
    etcd_put(etcd_server, "app/config", json.dumps({"greeting": "hello", "port": 1}))
    admin = free_port()
    dest = tmp_path / "app.conf"
    source = f"{etcd_server.url}/app/config"
    with configsync(tmp_path, source, admin, "--watch", "--retry-max", "1s"):
        wait_http("127.0.0.1", admin, "/readyz", timeout=20)
        etcd_server.restart()
        etcd_put(etcd_server, "app/config", json.dumps({"greeting": "restarted", "port": 2}))
        wait_for(lambda: "restarted" in dest.read_text(), timeout=10, what="after a restart")
        wait_recovered(admin)

        good = dest.read_text()
        etcd_server.stop()
        wait_backoff_at_cap(admin, cap=1.0)
        assert "keeping the last good config: fetch" in admin_get(admin, "/readyz")[1]
        assert dest.read_text() == good
        etcd_server.start()
        wait_recovered(admin)
        changes = json.loads(admin_get(admin, "/configsync")[1])["changes"]
        etcd_put(etcd_server, "app/config", json.dumps({"greeting": "back", "port": 3}))
        wait_for(lambda: "back" in dest.read_text(), timeout=2.0, what="the change after")
        assert json.loads(admin_get(admin, "/configsync")[1])["changes"] == changes + 1


def test_an_etcd_that_comes_back_empty_and_is_written_again_is_followed(
    tmp_path: Path, etcd_server: EtcdServer
) -> None:
    """etcd replaced by an empty one (its data lost) on the same address: while the key is
    missing the file stays; the value written anew is picked up, although its revisions
    repeat those of the old store."""
    etcd_put(etcd_server, "app/config", json.dumps({"greeting": "old store", "port": 1}))
    admin = free_port()
    dest = tmp_path / "app.conf"
    source = f"{etcd_server.url}/app/config"
    with configsync(tmp_path, source, admin, "--watch", "--retry-max", "500ms"):
        wait_http("127.0.0.1", admin, "/readyz", timeout=20)
        etcd_server.stop()
        with EtcdServer(port=etcd_server.port) as fresh:
            wait_for(lambda: "not found" in admin_get(admin, "/readyz")[1], timeout=20)
            assert "old store" in dest.read_text()
            # The same number of writes as in the old store: the same revisions.
            etcd_put(fresh, "app/config", json.dumps({"greeting": "new store", "port": 2}))
            wait_for(lambda: "new store" in dest.read_text(), timeout=10, what="the new value")
            wait_recovered(admin)


def test_an_etcd_prefix_is_rendered_as_one_object_and_exec_is_run_on_change(
    tmp_path: Path, etcd_server: EtcdServer
) -> None:
    """Every key under a prefix becomes a field of the rendered data; --exec runs once."""
    etcd_put(etcd_server, "svc/greeting", '"hi"')
    etcd_put(etcd_server, "svc/port", "9000")
    marker = tmp_path / "notified"
    script = f"import sys; open('{marker}', 'a').write(sys.argv[1] + '\\n')"
    hook = f'{sys.executable} -c "{script}" {{}}'
    admin = free_port()
    with configsync(tmp_path, f"{etcd_server.url}/svc/", admin, "--watch", "--exec", hook):
        wait_for(lambda: marker.exists(), timeout=20, what="the exec hook")
        assert (tmp_path / "app.conf").read_text() == "greeting = hi\nport = 9000\n"
        etcd_put(etcd_server, "svc/port", "9001")
        wait_for(lambda: "9001" in (tmp_path / "app.conf").read_text(), timeout=10)
        wait_for(lambda: len(marker.read_text().splitlines()) == 2, timeout=10)
    assert marker.read_text().splitlines() == [str(tmp_path / "app.conf")] * 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--source", "ftp://x/y"], "unknown source"),
        (["--source", "http://x/y", "--signal", "HUP"], "--signal and --pid-file go together"),
        (["--source", "http://x/y", "--exec", "true", "--post", "http://x/"], "choose one"),
    ],
)
def test_bad_options_are_one_line_errors(tmp_path: Path, args: list[str], message: str) -> None:
    """Wrong options exit 2 with one error line naming the problem."""
    import subprocess

    result = subprocess.run(
        [sys.executable, "-m", "podkit", "configsync", "--dest", str(tmp_path / "c"), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
