"""``podkit search``: build shard indexes, serve leaves and the root, and ask queries."""

from __future__ import annotations

import http.client
import json
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import click

from podkit.cli import PodkitCommand, PodkitGroup
from podkit.engines.http.access_log import AccessLogSettings
from podkit.engines.http.cli_options import (
    access_log_options,
    parse_fraction,
    server_limit_options,
)
from podkit.engines.http.client import Upstream
from podkit.engines.http.rules import ServerLimits
from podkit.errors import ConfigError, PodkitError
from podkit.runtime import HostPort, Runtime, RuntimeOptions, format_duration, run_component
from podkit.runtime.cli_options import DURATION, HOSTPORT, runtime_options
from podkit.serving.search._hedge import DEFAULT_HEDGE_RATIO
from podkit.serving.search._index import MAX_SHARDS, build_index, read_documents
from podkit.serving.search._inject import InjectDelay
from podkit.serving.search.leaf import DEFAULT_RELOAD_CHECK, LeafOptions, serve_leaf
from podkit.serving.search.root import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_DEADLINE,
    DEFAULT_K,
    MAX_K,
    RootOptions,
    serve_root,
)

MAX_REPLICAS = 16  # replicas of one shard beyond this is a typo
DEFAULT_QUERY_TIMEOUT = 10.0  # `podkit search query` waits this long for the root


@click.group(name="search", cls=PodkitGroup)
def group() -> None:
    """Scatter/gather document search: shard indexes, leaves, a root that merges exactly.

    Build N shards with `index`, serve each with `leaf`, put a `root` in front, and ask it
    with `query` or GET /search?q=...&k=10. Scores are BM25 with corpus-wide statistics, so
    the merged top k equals one index's over the whole corpus.
    """


@group.command(cls=PodkitCommand)
@click.option(
    "--shards",
    type=click.IntRange(1, MAX_SHARDS),
    required=True,
    help="Shard indexes to build (one leaf serves each).",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Directory to write shard-0 ... shard-N-1 into (replaced atomically).",
)
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
def index(shards: int, out: Path, inputs: tuple[Path, ...]) -> None:
    """Build N shard indexes from text files or JSON lines.

    INPUTS are text files (one document each, titled by its first line; a directory is
    walked) or JSON lines ({"id": ..., "title": ..., "body": ...} per line, in .jsonl or
    .ndjson files). Documents go to shards by jump hash of their id (podkit.hashing).
    """
    for path in inputs:
        if not path.exists():
            raise click.BadParameter(f"{path}: no such file or directory", param_hint="INPUTS")
    metas = build_index(
        read_documents(inputs),
        out,
        shards=shards,
        progress=lambda n: click.echo(f"{n} documents", err=True),
    )
    docs = sum(int(str(m["docs"])) for m in metas)
    for meta in metas:
        click.echo(
            f"{out / ('shard-' + str(meta['shard']))}: {meta['docs']} documents, "
            f"{meta['terms']} terms, version {meta['version']}"
        )
    click.echo(f"{docs} documents in {shards} shards")


@group.command(cls=PodkitCommand)
@click.option(
    "--listen",
    type=HOSTPORT,
    default="127.0.0.1:8091",
    show_default=True,
    help="Address to serve the shard on.",
)
@click.option(
    "--index",
    "index_dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="A shard directory written by `podkit search index` (DIR/shard-K).",
)
@click.option(
    "--inject-delay",
    default=None,
    metavar="FACTORx@PERCENT%",
    help="For tests and benchmarks: hold PERCENT of the answers until FACTOR times the "
    "median search time (10x@5%), or by a fixed DURATION (50ms@5%).",
)
@click.option(
    "--inject-seed",
    type=int,
    default=None,
    help="Seed of --inject-delay's draws (repeatable runs).",
)
@click.option(
    "--reload-check",
    type=DURATION,
    default=format_duration(DEFAULT_RELOAD_CHECK),
    show_default=True,
    help="How often the index's meta.json is checked for a rebuild, which is then served "
    "without a restart (searches in flight finish on the old one); 0s never checks.",
)
@access_log_options
@server_limit_options
@runtime_options
def leaf(
    listen: HostPort,
    index_dir: Path,
    inject_delay: str | None,
    inject_seed: int | None,
    reload_check: float,
    limits: ServerLimits,
    access_log: AccessLogSettings,
    runtime: RuntimeOptions,
) -> int:
    """Serve one shard index to the root.

    Routes: POST /search (from the root, with corpus-wide statistics), GET /search?q=...&k=10
    (this shard's own statistics), GET /df?t=TERM, GET /stats. The index is read from disk at
    start, so a restarted leaf serves the same documents, and read again when a rebuild
    replaces it (see --reload-check).
    """
    if reload_check < 0:
        raise ConfigError("must be 0s or more", path="--reload-check")
    inject = InjectDelay.parse(inject_delay) if inject_delay else None
    if not (index_dir / "meta.json").is_file():
        raise ConfigError(f"{index_dir}: not a shard index (no meta.json)", path="--index")
    options = LeafOptions(
        host=listen.host,
        port=listen.port,
        index=index_dir,
        inject=inject,
        seed=inject_seed,
        limits=limits,
        access_log=access_log,
        reload_check=reload_check,
    )

    async def main(rt: Runtime) -> None:
        await serve_leaf(rt, options)

    return run_component("search-leaf", main, runtime)


def parse_leaf(text: str) -> tuple[str, ...]:
    """``URL[,REPLICA_URL...]`` as the normalised URLs of one shard's replicas.

    Raises:
        ConfigError: an empty entry, a URL that is not http://host:port, too many replicas.
    """
    urls = [part.strip() for part in text.split(",")]
    if any(not url for url in urls):
        raise ConfigError(f"empty URL in {text!r}", path="--leaf")
    if len(urls) > MAX_REPLICAS:
        raise ConfigError(f"at most {MAX_REPLICAS} replicas per shard", path="--leaf")
    try:
        parsed = [str(Upstream.parse(url)) for url in urls]
    except ConfigError as exc:
        raise ConfigError(exc.reason, path="--leaf") from None
    if len(set(parsed)) != len(parsed):
        raise ConfigError(f"a replica is repeated in {text!r}", path="--leaf")
    return tuple(parsed)


@group.command(cls=PodkitCommand)
@click.option(
    "--listen",
    type=HOSTPORT,
    default="127.0.0.1:8090",
    show_default=True,
    help="Address to serve GET /search on.",
)
@click.option(
    "--leaf",
    "leaves",
    multiple=True,
    required=True,
    metavar="URL[,REPLICA_URL...]",
    help="One shard, in shard order: its leaf, and replicas of it after commas. Repeat "
    "for every shard.",
)
@click.option(
    "--deadline",
    type=DURATION,
    default=format_duration(DEFAULT_DEADLINE),
    show_default=True,
    help="Time a query may take; each leaf gets what remains. Leaves late by then are "
    "left out of the answer (see coverage).",
)
@click.option(
    "--hedge",
    type=click.Choice(["auto", "off"]),
    default="auto",
    show_default=True,
    help="auto: a leaf request slower than that shard's live p95 is also sent to another "
    "replica (first answer wins), within --hedge-budget.",
)
@click.option(
    "--hedge-budget",
    default=f"{DEFAULT_HEDGE_RATIO:.0%}",
    metavar="PERCENT",
    show_default=True,
    help="Most hedges, as a share of leaf requests over 10 s.",
)
@click.option(
    "--min-coverage",
    default="0%",
    metavar="PERCENT",
    show_default=True,
    help="Answer 503 (with the coverage) when the shards that answered hold less than this "
    "share of the documents; 100% refuses any partial answer.",
)
@click.option(
    "--top-q",
    default="auto",
    show_default=True,
    metavar="auto|N",
    help="Hits asked of each shard in the first round; shards whose N-th hit could still "
    "change the top k are asked again. auto: twice k's share per shard.",
)
@click.option(
    "--connect-timeout",
    type=DURATION,
    default=format_duration(DEFAULT_CONNECT_TIMEOUT),
    show_default=True,
    help="Time to connect to a leaf.",
)
@click.option(
    "--max-age",
    type=DURATION,
    default="0s",
    show_default=True,
    help="How long a cache in front may serve a complete answer (Cache-Control: public, "
    "max-age); a degraded answer gets no-store. 0s sends no Cache-Control.",
)
@access_log_options
@server_limit_options
@runtime_options
def root(
    listen: HostPort,
    leaves: tuple[str, ...],
    deadline: float,
    hedge: str,
    hedge_budget: str,
    min_coverage: str,
    top_q: str,
    connect_timeout: float,
    max_age: float,
    limits: ServerLimits,
    access_log: AccessLogSettings,
    runtime: RuntimeOptions,
) -> int:
    """Scatter each query to every shard and merge the hits exactly.

    Serves GET /search?q=...&k=10 as JSON: hits (id, score, shard, title, snippet), coverage
    (shards asked, answered, failed, timed out; documents covered), degraded, took (ms).
    Scores are BM25 with corpus-wide statistics; ties go to the smaller id.
    """
    if deadline <= 0:
        raise ConfigError("must be more than 0", path="--deadline")
    if max_age != 0 and (max_age < 1 or max_age != int(max_age)):
        raise ConfigError("must be 0s or whole seconds (max-age counts seconds)", path="--max-age")
    coverage = parse_fraction(min_coverage, field="--min-coverage")
    if not 0.0 <= coverage <= 1.0:
        raise ConfigError("must be 0%-100%", path="--min-coverage")
    ratio = parse_fraction(hedge_budget, field="--hedge-budget")
    if not 0.0 <= ratio <= 1.0:
        raise ConfigError("must be 0%-100%", path="--hedge-budget")
    q: int | None = None
    if top_q != "auto":
        if not top_q.isdigit() or not 1 <= int(top_q) <= MAX_K:
            raise ConfigError(f"expected auto or a whole number 1-{MAX_K}", path="--top-q")
        q = int(top_q)
    options = RootOptions(
        host=listen.host,
        port=listen.port,
        leaves=tuple(parse_leaf(text) for text in leaves),
        deadline=deadline,
        hedge="auto" if hedge == "auto" else "off",
        min_coverage=coverage,
        top_q=q,
        hedge_ratio=ratio,
        connect_timeout=connect_timeout,
        max_age=max_age,
        limits=limits,
        access_log=access_log,
    )

    async def main(rt: Runtime) -> None:
        await serve_root(rt, options)

    return run_component("search-root", main, runtime)


def _get(url: str, target: str, timeout: float) -> tuple[int, Any]:
    parts = urlsplit(url if "://" in url else "http://" + url)
    if parts.scheme != "http" or not parts.hostname:
        raise ConfigError(f"expected http://HOST:PORT, got {url!r}", path="URL")
    conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
    try:
        conn.request("GET", target)
        response = conn.getresponse()
        data = response.read()
    except OSError as exc:
        raise PodkitError(f"cannot reach {url}: {exc.strerror or exc}") from None
    finally:
        conn.close()
    try:
        return response.status, json.loads(data)
    except ValueError:
        raise PodkitError(f"{url} answered {response.status} without JSON") from None


def _coverage_line(body: dict[str, Any]) -> str:
    cov = body.get("coverage", {})
    line = (
        f"{cov.get('answered')}/{cov.get('shards')} shards, "
        f"{cov.get('docs')}/{cov.get('docs_total')} documents"
    )
    if cov.get("failed"):
        line += f", {cov['failed']} failed"
    if cov.get("timed_out"):
        line += f", {cov['timed_out']} timed out"
    return line + f"; took {body.get('took')} ms"


@group.command(cls=PodkitCommand)
@click.argument("url")
@click.argument("text")
@click.option(
    "-k",
    "k",
    type=click.IntRange(1, MAX_K),
    default=DEFAULT_K,
    show_default=True,
    help="Hits to show.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the root's JSON answer as it is.")
@click.option(
    "--timeout",
    type=DURATION,
    default=format_duration(DEFAULT_QUERY_TIMEOUT),
    show_default=True,
    help="Time to wait for the answer.",
)
def query(url: str, text: str, k: int, as_json: bool, timeout: float) -> int:
    """Ask the root at URL (http://HOST:PORT) for TEXT and print the hits."""
    if not text.strip():
        raise click.BadParameter("the query is empty", param_hint="TEXT")
    status, body = _get(url, "/search?" + urlencode({"q": text, "k": k}), timeout)
    if as_json:
        click.echo(json.dumps(body, indent=2, ensure_ascii=False))
        return 0 if status == 200 else 1
    if status != 200:
        click.echo(f"podkit search query: error: {status}: {body.get('error')}", err=True)
        if "coverage" in body:
            click.echo(_coverage_line(body), err=True)
        sys.exit(1)
    for rank, hit in enumerate(body["hits"], 1):
        click.echo(f"{rank:>3}. {hit['score']:.4f}  {hit['id']}  (shard {hit['shard']})")
        if hit.get("title"):
            click.echo(f"     {hit['title']}")
        if hit.get("snippet"):
            click.echo(f"     {hit['snippet']}")
    if not body["hits"]:
        click.echo("no hits")
    degraded = " (degraded)" if body.get("degraded") else ""
    click.echo(_coverage_line(body) + degraded)
    return 0
