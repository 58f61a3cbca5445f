"""Generated corpora and in-process leaves and roots for the search tests."""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

from podkit.engines.http import HTTPServer
from podkit.serving.search import InjectDelay, LeafApp, SearchRoot, ShardIndex, build_index
from podkit.serving.search._index import Document

VOCABULARY = [f"w{i}" for i in range(300)] + ["alpha", "beta", "gamma", "delta"]


def generated_corpus(count: int, *, seed: int = 7) -> list[Document]:
    """Documents of Zipf-like words (so some terms are common and some rare), some of them
    exact copies of others, so equal scores occur and the id tie-break is exercised."""
    rng = random.Random(seed)
    weights = [1 / (rank + 1) for rank in range(len(VOCABULARY))]
    docs: list[Document] = []
    for i in range(count):
        if docs and rng.random() < 0.05:
            twin = rng.choice(docs)
            docs.append(Document(f"doc-{i:05d}", twin.title, twin.body))
            continue
        words = rng.choices(VOCABULARY, weights, k=rng.randint(3, 120))
        docs.append(Document(f"doc-{i:05d}", f"title {i}", " ".join(words)))
    return docs


def write_jsonl(path: Path, docs: Sequence[Document]) -> Path:
    with path.open("w", encoding="utf-8") as handle:
        for doc in docs:
            handle.write(json.dumps({"id": doc.id, "title": doc.title, "body": doc.body}) + "\n")
    return path


def build(tmp: Path, docs: Sequence[Document], shards: int) -> list[ShardIndex]:
    out = tmp / f"index-{shards}"
    build_index(docs, out, shards=shards)
    return [ShardIndex(out / f"shard-{k}") for k in range(shards)]


@asynccontextmanager
async def leaves_and_root(
    replicas: Sequence[Sequence[ShardIndex]],
    *,
    inject: dict[tuple[int, int], InjectDelay] | None = None,
    **root_options: object,
) -> AsyncIterator[tuple[SearchRoot, list[list[LeafApp]]]]:
    """A leaf server per (shard, replica) on a free port, and a root over them."""
    async with AsyncExitStack() as stack:
        apps: list[list[LeafApp]] = []
        urls: list[list[str]] = []
        for s, indexes in enumerate(replicas):
            apps.append([])
            urls.append([])
            for r, index in enumerate(indexes):
                app = LeafApp(index, inject=(inject or {}).get((s, r)), seed=s * 100 + r)
                server = await stack.enter_async_context(
                    HTTPServer(app.handle, host="127.0.0.1", port=0, name=f"leaf-{s}-{r}")
                )
                apps[s].append(app)
                urls[s].append(f"http://127.0.0.1:{server.port}")
        root = await stack.enter_async_context(SearchRoot(urls, seed=1, **root_options))  # type: ignore[arg-type]
        yield root, apps
