"""Word count over >= 1,000,000 lines: podkit pipeline against Apache Beam and a plain loop.

Every system computes the same thing, the word counts of a directory of text (a word is
``re.findall(r"[a-z0-9]+", line.lower())``), with the same logic: the files are cut into
pieces of ``LINES_PER_ITEM`` lines (examples/wordcount/wc.py: 10,000), the words of a piece
are counted (a combiner), and the counts are summed per word. The result of each is checked
against ``collections.Counter``.

* ``plain loop``: one process, ``Counter.update`` line by line (the floor);
* ``podkit in-process``: ``examples/wordcount/pipeline.yaml`` with ``memory://``;
* ``podkit sqlite`` / ``podkit redis``: the same file with worker processes (2 for the map
  and 2 for the reduce, 1 each for the splitter and the sharder) on a SQLite file / a
  redis-server started here;
* ``beam DirectRunner``: ``beam.Create(files) | FlatMap(pieces) | FlatMap(count words) |
  CombinePerKey(sum)`` on Apache Beam's DirectRunner (installed here when missing).

The corpus is generated once (Zipf-distributed words over a 50,000-word vocabulary, 9 words a
line, fixed seed). Wall time is what a user waits; CPU is the seconds every process of the
system spent (this one and its children, and for Redis the redis-server's own, read from
/proc), which a busy machine disturbs much less. Every system runs ``--rounds`` times,
interleaved (round 1 of each, then round 2 of each...), and the tables give medians; the
load average is printed before and after, since the machine may be shared.

Run from the repository root:
    .venv/bin/python bench/pipeline_wordcount.py [--lines N] [--rounds R] [--skip SYSTEM]
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import itertools
import os
import random
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "wordcount"
WORD = re.compile(r"[a-z0-9]+")
VOCABULARY = 50_000
WORDS_PER_LINE = 9


def make_corpus(root: Path, lines: int, files: int, seed: int) -> None:
    rng = random.Random(seed)
    vocabulary = [f"w{i}" for i in range(VOCABULARY)]
    cumulative = list(itertools.accumulate(1 / (i + 1) ** 1.1 for i in range(VOCABULARY)))
    per_file = lines // files
    for f in range(files):
        words = rng.choices(vocabulary, cum_weights=cumulative, k=per_file * WORDS_PER_LINE)
        with (root / f"part-{f:03d}.txt").open("w") as fh:
            for i in range(per_file):
                fh.write(" ".join(words[i * WORDS_PER_LINE : (i + 1) * WORDS_PER_LINE]) + "\n")


def cpu_seconds() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def process_cpu(pid: int) -> float:
    """CPU seconds of a running process that is not ours to wait for (redis-server)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(
    run: Callable[[], dict[str, int]], server_pid: int | None = None
) -> tuple[dict[str, int], float, float]:
    server = process_cpu(server_pid) if server_pid else 0.0
    wall, cpu = time.perf_counter(), cpu_seconds()
    counts = run()
    wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    if server_pid:
        cpu += process_cpu(server_pid) - server
    return counts, wall, cpu


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def plain_loop(corpus: Path) -> dict[str, int]:
    counts: collections.Counter[str] = collections.Counter()
    for path in sorted(corpus.glob("**/*")):
        if path.is_file():
            with path.open(encoding="utf-8", errors="replace") as fh:
                for line in fh:
                    counts.update(WORD.findall(line.lower()))
    return dict(counts)


def read_counts(path: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for line in path.read_text().splitlines():
        word, n = line.split(" ")
        counts[word] = int(n)
    return counts


def pipeline_file(work: Path, backend: str) -> Path:
    data = yaml.safe_load((EXAMPLE / "pipeline.yaml").read_text())
    data["topics"] = {"backend": backend, "batch": 1000, "visibility": "2m"}
    if backend != "memory://":
        data["stages"]["words"]["workers"] = 2
        data["stages"]["count"]["workers"] = 2
    shutil.copy(EXAMPLE / "wc.py", work / "wc.py")
    path = work / f"wordcount-{backend.split(':')[0]}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def podkit(corpus: Path, work: Path, backend: str) -> dict[str, int]:
    out = work / "counts.txt"
    path = pipeline_file(work, backend)
    sets = [f"input={corpus}", f"output={out}"]
    if backend == "memory://":
        from podkit.batch.pipeline.local import LocalRunner
        from podkit.batch.pipeline.model import load_pipeline

        LocalRunner(load_pipeline(path, dict(s.split("=", 1) for s in sets))).run()
    else:
        argv = [sys.executable, "-m", "podkit", "pipeline", "run", str(path), "--progress", "none"]
        for pair in sets:
            argv += ["--set", pair]
        subprocess.run(argv, check=True, cwd=work)
    return read_counts(out)


def ensure_beam() -> None:
    if importlib.util.find_spec("apache_beam") is None:
        print("installing apache-beam ...", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "apache-beam"], check=True)


BEAM_PROGRAM = r"""
import collections, json, re, sys
from itertools import islice
from pathlib import Path
import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

WORD = re.compile(r"[a-z0-9]+")

def pieces(path):
    with open(path, encoding="utf-8", errors="replace") as fh:
        while chunk := list(islice(fh, LINES_PER_ITEM)):
            yield "".join(chunk)

def words(text):
    return collections.Counter(WORD.findall(text.lower())).items()

corpus, out, LINES_PER_ITEM = sys.argv[1], sys.argv[2], int(sys.argv[3])
files = sorted(str(p) for p in Path(corpus).glob("**/*") if p.is_file())
options = PipelineOptions(["--runner=DirectRunner"])
with beam.Pipeline(options=options) as p:
    (p | beam.Create(files) | beam.FlatMap(pieces) | beam.FlatMap(words)
       | beam.CombinePerKey(sum) | beam.Map(lambda kv: f"{kv[0]} {kv[1]}")
       | beam.io.WriteToText(out, shard_name_template=""))
"""


def beam(corpus: Path, work: Path) -> dict[str, int]:
    program = work / "beam_wordcount.py"
    program.write_text(BEAM_PROGRAM)
    out = work / "beam-counts.txt"
    sys.path.insert(0, str(EXAMPLE))
    from wc import LINES_PER_ITEM  # the same pieces as the pipeline's splitter

    subprocess.run(
        [sys.executable, str(program), str(corpus), str(out), str(LINES_PER_ITEM)],
        check=True,
        cwd=work,
    )
    return read_counts(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--files", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3, help="runs of each system (median)")
    parser.add_argument("--skip", action="append", default=[], help="system to leave out")
    args = parser.parse_args()

    from podkit.testing import RedisServer

    print(f"load average before: {load()}", flush=True)
    walls: dict[str, list[float]] = {}
    cpus: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="podkit-wc-") as tmp:
        corpus = Path(tmp) / "corpus"
        corpus.mkdir()
        make_corpus(corpus, args.lines, args.files, args.seed)
        expected = plain_loop(corpus)
        print(f"{args.lines} lines, {sum(expected.values())} words, {len(expected)} distinct")
        systems: list[tuple[str, Callable[[Path], dict[str, int]]]] = [
            ("plain loop", lambda w: plain_loop(corpus)),
            ("podkit in-process", lambda w: podkit(corpus, w, "memory://")),
        ]
        if "sqlite" not in args.skip:
            systems.append(("podkit sqlite", lambda w: podkit(corpus, w, f"sqlite:///{w}/wc.db")))
        redis_server: Any = None
        if "redis" not in args.skip:
            redis_server = RedisServer().__enter__()
            url = redis_server.url
            systems.append(("podkit redis", lambda w: podkit(corpus, w, url)))
        if "beam" not in args.skip:
            ensure_beam()
            systems.append(("beam DirectRunner", lambda w: beam(corpus, w)))
        try:
            for r in range(args.rounds):
                for name, run in systems:
                    work = Path(tmp) / f"{name.replace(' ', '-')}-{r}"
                    work.mkdir()
                    pid = redis_server.process.pid if name == "podkit redis" else None
                    got, wall, cpu = measure(lambda run=run, work=work: run(work), pid)  # type: ignore[misc]
                    assert got == expected, f"{name}: counts differ from Counter's"
                    walls.setdefault(name, []).append(wall)
                    cpus.setdefault(name, []).append(cpu)
                    print(
                        f"  round {r + 1}: {name}: {wall:.2f} s wall, {cpu:.2f} s CPU", flush=True
                    )
        finally:
            if redis_server is not None:
                redis_server.__exit__(None, None, None)
    print(f"load average after: {load()}")
    wall = {name: statistics.median(v) for name, v in walls.items()}
    cpu = {name: statistics.median(v) for name, v in cpus.items()}
    beam_name = "beam DirectRunner" if "beam DirectRunner" in wall else None
    print()
    print(f"medians of {args.rounds} interleaved rounds")
    print(
        "| system | wall s | CPU s | lines/s (wall) | vs plain loop (wall) | vs plain loop (CPU) "
        "| vs Beam (wall) | vs Beam (CPU) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name in wall:
        vs_beam = (
            f"{wall[beam_name] / wall[name]:.2f}x | {cpu[beam_name] / cpu[name]:.2f}x"
            if beam_name
            else "- | -"
        )
        print(
            f"| {name} | {wall[name]:.2f} | {cpu[name]:.2f} | {args.lines / wall[name]:,.0f} | "
            f"{wall['plain loop'] / wall[name]:.2f}x | {cpu['plain loop'] / cpu[name]:.2f}x | "
            f"{vs_beam} |"
        )


if __name__ == "__main__":
    main()
