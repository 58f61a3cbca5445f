"""Benchmark ``podkit search``: exactness, tail latency with hedging, cost, and the simulator.

Run from the repository root after ``make setup`` (which installs the man pages this uses
and the tantivy Python bindings it compares with):

    .venv/bin/python bench/search.py all            # every part, about ten minutes
    .venv/bin/python bench/search.py exact --queries 1000
    .venv/bin/python bench/search.py tail --queries 3000
    .venv/bin/python bench/search.py cost --seconds 10
    .venv/bin/python bench/search.py sim

The corpus is every English man page installed (``manpages``, ``manpages-dev`` and those of
the packages on the machine), one document per top-level section (bench/search_corpus.py),
40,000 documents by default. Leaves and root are real processes on loopback; the reference
single index is podkit's own over the whole corpus, in this process, and tantivy's.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from search_corpus import documents

from podkit.serving.search import ShardIndex, build_index
from podkit.serving.search._index import read_documents
from podkit.serving.search._text import query_terms, tokenize
from podkit.serving.search.simulate import simulate
from podkit.testing import PodkitProcess, free_port, wait_http

K = 10


def corpus(tmp: Path, docs: int) -> Path:
    path = tmp / "manpages.jsonl"
    if not path.exists():
        with path.open("w", encoding="utf-8") as handle:
            for doc in documents(docs):
                handle.write(json.dumps(doc, ensure_ascii=False) + "\n")
    return path


def indexes(tmp: Path, source: Path, shards: int) -> Path:
    out = tmp / f"index-{shards}"
    if not (out / "shard-0" / "meta.json").exists():
        started = time.perf_counter()
        build_index(read_documents([source]), out, shards=shards)
        print(f"built {shards} shard(s) in {time.perf_counter() - started:.1f}s", flush=True)
    return out


def queries(source: Path, count: int, seed: int = 42) -> list[str]:
    """``count`` queries of 1-3 words drawn from the corpus vocabulary (words of random
    documents, so common and rare words come in their natural proportion)."""
    rng = random.Random(seed)
    lines = source.read_text(encoding="utf-8").splitlines()
    found: list[str] = []
    while len(found) < count:
        doc = json.loads(rng.choice(lines))
        words = [w for w in tokenize(doc["body"]) if len(w) > 2 and not w.isdigit()]
        if words:
            found.append(" ".join(rng.sample(words, min(len(words), rng.randint(1, 3)))))
    return found


class Client:
    """Keep-alive GETs to one port."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def get(self, target: str) -> tuple[int, Any]:
        try:
            self.conn.request("GET", target)
            response = self.conn.getresponse()
            return response.status, json.loads(response.read())
        except (OSError, http.client.HTTPException):
            self.conn.close()
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            raise

    def search(self, text: str, k: int = K) -> dict[str, Any]:
        from urllib.parse import urlencode

        status, body = self.get("/search?" + urlencode({"q": text, "k": k}))
        if status != 200:
            raise RuntimeError(f"root answered {status}: {body}")
        return body  # type: ignore[no-any-return]


@contextmanager
def tier(
    index: Path,
    shards: int,
    *,
    replicas: dict[int, Sequence[Sequence[str]]] | None = None,
    root_args: Sequence[str] = (),
) -> Iterator[tuple[int, int]]:
    """Leaf processes (one per shard, or the replicas given with their extra flags) and a
    root; yields the root's port and admin port."""
    with ExitStack() as stack:
        leaf_urls = []
        for k in range(shards):
            urls = []
            for extra in (replicas or {}).get(k, [()]):
                port, admin = free_port(), free_port()
                proc = PodkitProcess(
                    "search", "leaf", "--listen", f"127.0.0.1:{port}",
                    "--index", str(index / f"shard-{k}"), "--access-log", "off",
                    "--admin", f"127.0.0.1:{admin}", *extra,
                )  # fmt: skip
                stack.enter_context(proc)
                wait_http("127.0.0.1", admin, "/readyz", timeout=60)
                urls.append(f"http://127.0.0.1:{port}")
            leaf_urls.append(",".join(urls))
        port, admin = free_port(), free_port()
        root = PodkitProcess(
            "search", "root", "--listen", f"127.0.0.1:{port}", "--access-log", "off",
            "--admin", f"127.0.0.1:{admin}",
            *[a for url in leaf_urls for a in ("--leaf", url)], *root_args,
        )  # fmt: skip
        stack.enter_context(root)
        wait_http("127.0.0.1", admin, "/readyz", timeout=30)
        yield port, admin


def metrics(admin: int) -> dict[str, float]:
    conn = http.client.HTTPConnection("127.0.0.1", admin, timeout=5)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("podkit_search_") and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            key = name.split("{")[0]
            found[key] = found.get(key, 0.0) + float(value)
    return found


def tantivy_index(source: Path) -> Any:
    import tantivy

    builder = tantivy.SchemaBuilder()
    builder.add_text_field("id", stored=True, tokenizer_name="raw")
    builder.add_text_field("text", stored=False)
    schema = builder.build()
    index = tantivy.Index(schema)
    writer = index.writer(heap_size=200_000_000, num_threads=1)
    for line in source.read_text(encoding="utf-8").splitlines():
        doc = json.loads(line)
        writer.add_document(tantivy.Document(id=doc["id"], text=doc["title"] + "\n" + doc["body"]))
    writer.commit()
    writer.wait_merging_threads()
    index.reload()
    return index


def tantivy_top(index: Any, searcher: Any, text: str, k: int = K) -> list[str]:
    query = index.parse_query(" ".join(query_terms(text)), ["text"])
    return [searcher.doc(address)["id"][0] for _, address in searcher.search(query, k).hits]


def run_exact(tmp: Path, source: Path, count: int) -> None:
    asked = queries(source, count)
    one = ShardIndex(indexes(tmp, source, 1) / "shard-0")
    reference = [one.search(query_terms(q), K, snippets=False)[0] for q in asked]
    for shards in (4, 8):
        index = indexes(tmp, source, shards)
        identical = second = 0
        worst = 0.0
        with tier(index, shards, root_args=("--deadline", "30s")) as (port, _admin):
            client = Client(port)
            for text, want in zip(asked, reference, strict=True):
                body = client.search(text)
                got = [(h["id"], h["score"]) for h in body["hits"]]
                same = [h.id for h in want] == [i for i, _ in got]
                identical += same
                second += body["rounds"] == 2
                if same:
                    worst = max(
                        [worst] + [abs(a - h.score) for (_, a), h in zip(got, want, strict=True)]
                    )
        print(
            f"exact, {shards} leaves: {identical}/{count} top-{K} identical to one index, "
            f"largest score difference {worst:.3g}, "
            f"second round on {second / count:.1%} of queries",
            flush=True,
        )
    try:
        tindex = tantivy_index(source)
    except ImportError:
        print("tantivy is not installed: no overlap figure")
        return
    searcher = tindex.searcher()
    overlaps = []
    for text, want in zip(asked, reference, strict=True):
        theirs = set(tantivy_top(tindex, searcher, text))
        ours = [h.id for h in want]
        if ours:
            overlaps.append(len(theirs & set(ours)) / len(ours))
    print(
        f"overlap of top-{K} with tantivy's BM25 on one index: "
        f"mean {statistics.mean(overlaps):.1%}, "
        f"identical sets on {sum(o == 1.0 for o in overlaps) / len(overlaps):.1%} of queries",
        flush=True,
    )


def _quantiles(values: list[float]) -> str:
    values = sorted(values)

    def q(p: float) -> float:
        return values[min(len(values) - 1, int(p * len(values)))] * 1000

    return f"p50 {q(0.5):6.2f} ms  p99 {q(0.99):6.2f} ms  p99.9 {q(0.999):6.2f} ms"


def run_tail(tmp: Path, source: Path, count: int, how_slow: str) -> None:
    index = indexes(tmp, source, 4)
    asked = queries(source, count, seed=7)
    slow = ("--inject-delay", how_slow, "--inject-seed", "1")
    cases = [
        ("no slow leaf, hedging on", {0: [(), ()]}, "auto"),
        (f"one replica {how_slow}, hedging off", {0: [(), slow]}, "off"),
        (f"one replica {how_slow}, hedging on", {0: [(), slow]}, "auto"),
    ]
    results = {}
    for name, replicas, hedge in cases:
        with tier(
            index, 4, replicas=replicas, root_args=("--hedge", hedge, "--deadline", "5s")
        ) as (port, admin):
            client = Client(port)
            for text in asked[:200]:  # warm up: the statistics cache and the live p95
                client.search(text)
            before = metrics(admin)
            times = []
            for text in asked:
                started = time.perf_counter()
                client.search(text)
                times.append(time.perf_counter() - started)
            after = metrics(admin)
        shard_requests = "podkit_search_shard_requests_total"
        leaf = after[shard_requests] - before[shard_requests]
        sent = after.get("podkit_search_hedges_sent_total", 0) - before.get(
            "podkit_search_hedges_sent_total", 0
        )
        won = after.get("podkit_search_hedges_won_total", 0) - before.get(
            "podkit_search_hedges_won_total", 0
        )
        results[name] = sorted(times)
        print(
            f"tail, {name:36s} {_quantiles(times)}  "
            f"hedges {sent:.0f} ({sent / leaf:.1%} extra), won {won:.0f}",
            flush=True,
        )
    base = results[cases[0][0]]
    hedged = results[cases[2][0]]
    ratio = hedged[int(0.99 * len(hedged))] / base[int(0.99 * len(base))]
    print(f"tail, p99 with hedging / p99 with no slow leaf: {ratio:.2f}", flush=True)


def run_cost(tmp: Path, source: Path, seconds: float, clients: int) -> None:
    index = indexes(tmp, source, 4)
    asked = queries(source, 2000, seed=9)
    done = 0
    lock = threading.Lock()
    with tier(index, 4) as (port, _):
        stop = time.perf_counter() + seconds

        def loop(offset: int) -> None:
            nonlocal done
            client = Client(port)
            i = offset
            while time.perf_counter() < stop:
                client.search(asked[i % len(asked)])
                i += 1
                with lock:
                    done += 1

        threads = [threading.Thread(target=loop, args=(n * 97,)) for n in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    print(
        f"cost, root over 4 leaves ({clients} clients): {done / seconds:.0f} queries/s", flush=True
    )
    try:
        tindex = tantivy_index(source)
    except ImportError:
        print("tantivy is not installed: no comparison")
        return
    searcher = tindex.searcher()
    n = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        tantivy_top(tindex, searcher, asked[n % len(asked)])
        n += 1
    print(
        f"cost, tantivy, one index in one process: "
        f"{n / (time.perf_counter() - started):.0f} queries/s",
        flush=True,
    )
    one = ShardIndex(indexes(tmp, source, 1) / "shard-0")
    n = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        one.search(query_terms(asked[n % len(asked)]), K)
        n += 1
    print(
        f"cost, podkit's index, one process, no HTTP: "
        f"{n / (time.perf_counter() - started):.0f} queries/s",
        flush=True,
    )


def run_sim(queries_per_point: int) -> None:
    print(
        "sim: leaves  wait-all p50/p99/p99.9 ms | hedged at p95 | 99% cut-off | extra", flush=True
    )
    for leaves in (1, 10, 100, 1000):
        n = max(200, queries_per_point // max(1, leaves // 10))
        r = simulate(leaves, n)

        def fmt(t: tuple[float, float, float]) -> str:
            return "/".join(f"{x * 1000:.0f}" for x in t)

        print(
            f"sim: {leaves:6d}  {fmt(r.wait_all):>14s} | {fmt(r.hedged):>12s} | "
            f"{fmt(r.cut_off):>12s} | {r.extra_requests:.1%}",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("part", choices=["all", "exact", "tail", "cost", "sim"])
    parser.add_argument("--docs", type=int, default=40_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument(
        "--slow",
        default="10x@5%",
        help="--inject-delay of the slow replica in the tail part (10x the leaf's median "
        "search time; 150ms@5%% is about 10x the root's median answer here)",
    )
    parser.add_argument("--work", type=Path, default=None, help="keep corpus and indexes here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        tmp = args.work or Path(scratch)
        tmp.mkdir(parents=True, exist_ok=True)
        source = corpus(tmp, args.docs) if args.part != "sim" else Path()
        if args.part in ("all", "exact"):
            run_exact(tmp, source, args.queries)
        if args.part in ("all", "tail"):
            count = max(args.queries, 2000) if args.part == "all" else args.queries
            run_tail(tmp, source, count, args.slow)
        if args.part in ("all", "cost"):
            run_cost(tmp, source, args.seconds, args.clients)
        if args.part in ("all", "sim"):
            run_sim(2000)


if __name__ == "__main__":
    main()
