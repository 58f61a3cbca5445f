"""Every Python snippet of README.md and docs/*.md runs as written, as a program of its own.

The convention (README, "Development"): a ```python fence holds a complete program. An HTML
comment on the line before the fence, ``<!-- snippet: WORD ... -->``, asks this test for what
the program needs; the addresses the snippet shows are then replaced by those of the servers
started here, on free loopback ports:

* ``redis``: a redis-server, for ``redis://127.0.0.1:6379/0``;
* ``etcd``: an etcd, for ``etcd://127.0.0.1:2379``;
* ``upstream``: a ``podkit whoami``, for ``http://127.0.0.1:8001``;
* ``shards``: two memcached, for ``127.0.0.1:11211`` and ``127.0.0.1:11212``, and two
  redis-server, for ``127.0.0.1:6379`` and ``127.0.0.1:6380``;
* ``certs``: ``site.crt``/``site.key`` and ``api.crt``/``api.key`` (self-signed) in the
  program's directory;
* ``serve``: the program serves until stopped: it gets SIGTERM once it logs ``ready`` and
  must then exit 0;
* ``repo``: the program runs in the repository's root (it names files of the repository)
  rather than in an empty directory.
"""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from podkit.testing import (
    EtcdServer,
    MemcachedServer,
    PodkitProcess,
    RedisServer,
    free_port,
    wait_http,
)
from podkit.testing.net import wait_for
from tests.sidecar.pki import TestCA

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(
    r"(?:^<!-- snippet:(?P<needs>[^>]*)-->\n)?^```python\n(?P<code>.*?)^```$",
    re.MULTILINE | re.DOTALL,
)
KNOWN_NEEDS = {"redis", "etcd", "upstream", "shards", "certs", "serve", "repo"}
TIMEOUT = 60.0


@dataclass(frozen=True)
class Snippet:
    document: str
    line: int
    code: str
    needs: frozenset[str]

    @property
    def name(self) -> str:
        return f"{self.document}:{self.line}"


def snippets() -> list[Snippet]:
    found = []
    for path in DOCUMENTS:
        text = path.read_text(encoding="utf-8")
        for match in FENCE.finditer(text):
            line = text.count("\n", 0, match.start("code"))
            needs = frozenset((match.group("needs") or "").split())
            found.append(Snippet(str(path.relative_to(ROOT)), line, match.group("code"), needs))
    return found


SNIPPETS = snippets()


def test_every_document_with_python_has_its_snippets_found_and_every_need_is_known() -> None:
    assert len(SNIPPETS) >= 20
    for snippet in SNIPPETS:
        assert snippet.needs <= KNOWN_NEEDS, snippet.name


@contextlib.contextmanager
def servers(snippet: Snippet, workdir: Path) -> Iterator[dict[str, str]]:
    """Start what the snippet asks for; yield the replacements of its addresses."""
    replace: dict[str, str] = {}
    with contextlib.ExitStack() as stack:
        if "redis" in snippet.needs:
            redis_server = stack.enter_context(RedisServer())
            replace["redis://127.0.0.1:6379/0"] = redis_server.url
        if "etcd" in snippet.needs:
            etcd_server = stack.enter_context(EtcdServer())
            replace["etcd://127.0.0.1:2379"] = etcd_server.url
        if "upstream" in snippet.needs:
            port = free_port()
            stack.enter_context(PodkitProcess("whoami", "--listen", f"127.0.0.1:{port}"))
            wait_http("127.0.0.1", port, "/", timeout=20)
            replace["http://127.0.0.1:8001"] = f"http://127.0.0.1:{port}"
        if "shards" in snippet.needs:
            for shown in ("127.0.0.1:11211", "127.0.0.1:11212"):
                memcached = stack.enter_context(MemcachedServer())
                replace[shown] = f"127.0.0.1:{memcached.port}"
            for shown in ("127.0.0.1:6379", "127.0.0.1:6380"):
                redis_shard = stack.enter_context(RedisServer())
                replace[shown] = f"127.0.0.1:{redis_shard.port}"
        if "certs" in snippet.needs:
            ca = TestCA(workdir)
            ca.issue("site", common_name="localhost", dns=("localhost",))
            ca.issue("api", common_name="api.example.com", dns=("api.example.com",))
        yield replace


@pytest.mark.parametrize("snippet", SNIPPETS, ids=[s.name for s in SNIPPETS])
def test_the_snippet_runs_as_written(snippet: Snippet, tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    workdir.mkdir()
    with servers(snippet, workdir) as replace:
        code = snippet.code
        for old, new in replace.items():
            code = code.replace(old, new)
        program = tmp_path / "snippet.py"
        program.write_text(code)
        cwd = ROOT if "repo" in snippet.needs else workdir
        argv = [sys.executable, str(program)]
        if "serve" not in snippet.needs:
            result = subprocess.run(
                argv, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT, check=False
            )
            assert result.returncode == 0, f"{snippet.name}\n{result.stdout}\n{result.stderr}"
            return
        log = tmp_path / "output"
        with log.open("w") as out:
            process = subprocess.Popen(argv, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
            try:
                wait_for(
                    lambda: '"ready"' in log.read_text() or process.poll() is not None,
                    timeout=TIMEOUT,
                    what=f"{snippet.name} to be ready",
                )
                assert process.poll() is None, log.read_text()
                process.send_signal(signal.SIGTERM)
                assert process.wait(TIMEOUT) == 0, log.read_text()
            finally:
                if process.poll() is None:
                    process.kill()
                    process.wait()
