"""Nearest-neighbour search: tripletlab-index's FAISS indexes beside exact search.

``python -m tripletlab.bench index [--count 1000000] [--dim 64] [--queries 10000] [--run DIR]``

Two galleries: ``--count`` random unit vectors of ``--dim`` dimensions with ``--queries``
random unit queries (the hardest case for an approximate index: no structure to exploit),
and, with ``--run``, a trained run's train split as gallery and its test split as queries
(embedded with the run's model). For each: exact search as ``tripletlab-embed`` did it
before the index (:func:`tripletlab.reuse.embed.nearest`, float64 numpy, timed on
``--exact-queries`` of the queries in chunks small enough for the memory), FAISS's exact
``IndexFlatL2`` (whose answers are the ground truth for recall, checked against numpy's),
and the ``hnsw`` and ``ivfpq`` indexes with the parameters ``tripletlab-index`` uses plus a
few search settings around them. Each row: build seconds, the index's size and the process'
memory growth while building, queries per second, the speed-up over numpy's exact search
and recall@k against exact search. Everything runs in one process, one after the other,
so on a shared machine the ratios are fairer than the absolute numbers.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import subprocess
import time
from pathlib import Path

import numpy as np

DEFAULT_MD = Path("results/bench_index.md")
MACHINE = "AMD EPYC (Zen 4), AVX2 + AVX-512 BF16, no AMX"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tripletlab.bench index", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--count", type=int, default=1_000_000, help="random gallery vectors")
    parser.add_argument("--dim", type=int, default=64, help="their dimension")
    parser.add_argument("--queries", type=int, default=10_000, help="random queries")
    parser.add_argument("--k", type=int, default=10, help="neighbours per query (recall@k)")
    parser.add_argument(
        "--exact-queries",
        type=int,
        default=1000,
        help="queries numpy's exact search is timed on (it is the slowest by far)",
    )
    parser.add_argument("--run", type=Path, help="also a trained run's train split (gallery)")
    parser.add_argument("--md", type=Path, default=DEFAULT_MD, help="where the table goes")
    parser.add_argument("--machine", default=MACHINE, help="the CPU, for the table's header")
    return parser.parse_args(argv)


def rss_bytes() -> int:
    """The process' resident memory now (Linux; 0 elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def unit_vectors(count: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((count, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean over queries of |found ∩ truth| / k."""
    hits = sum(len(set(f) & set(t)) for f, t in zip(found.tolist(), truth.tolist(), strict=True))
    return hits / truth.size


def _numpy_chunk(gallery_size: int) -> int:
    # nearest()'s float64 temporaries are [chunk, gallery]: keep each near 512 MiB.
    return max(1, min(512, (512 << 20) // (8 * gallery_size)))


def measure(name: str, gallery: np.ndarray, queries: np.ndarray, k: int, exact_queries: int):
    """The rows for one gallery (see the module docstring)."""
    import faiss

    from tripletlab.reuse.embed import nearest
    from tripletlab.reuse.index import EF_SEARCH, NPROBE, new_index, set_search_parameters

    rows = []
    n, dim = gallery.shape
    subset = queries[: min(exact_queries, len(queries))]

    t = time.perf_counter()
    numpy_idx, _ = nearest(subset, gallery, k, chunk=_numpy_chunk(n))
    numpy_qps = len(subset) / (time.perf_counter() - t)
    rows.append(
        dict(
            gallery=name,
            method="exact, numpy float64 (tripletlab-embed before)",
            params=f"chunk {_numpy_chunk(n)}",
            build_s=0.0,
            index_mib=gallery.nbytes / 2**20,
            rss_mib=float("nan"),
            qps=numpy_qps,
            speedup=1.0,
            recall=1.0,
            queries=len(subset),
        )
    )

    def build(kind):
        before = rss_bytes()
        t0 = time.perf_counter()
        index = new_index(kind, dim, n)
        if kind == "ivfpq":
            from tripletlab.reuse.index import training_size

            sample = training_size(kind, n)
            chosen = np.random.default_rng(0).choice(n, size=sample, replace=False)
            index.train(gallery[np.sort(chosen)])
        for start in range(0, n, 65536):  # batches, as tripletlab-index adds them
            index.add(gallery[start : start + 65536])
        seconds = time.perf_counter() - t0
        size = faiss.serialize_index(index).nbytes / 2**20
        return index, seconds, size, (rss_bytes() - before) / 2**20

    def timed_search(index):
        t0 = time.perf_counter()
        _, idx = index.search(queries, k)
        return idx, len(queries) / (time.perf_counter() - t0)

    flat, build_s, size, grown = build("exact")
    truth, flat_qps = timed_search(flat)
    agreement = recall(truth[: len(subset)], numpy_idx)
    rows.append(
        dict(
            gallery=name,
            method="exact, FAISS IndexFlatL2 float32 (--kind exact)",
            params="",
            build_s=build_s,
            index_mib=size,
            rss_mib=grown,
            qps=flat_qps,
            speedup=flat_qps / numpy_qps,
            recall=agreement,
            queries=len(queries),
        )
    )
    del flat

    settings = {
        "hnsw": [("efSearch", v) for v in (64, EF_SEARCH, 256, 512)],
        "ivfpq": [("nprobe", v) for v in (8, NPROBE, 128)],
    }
    for kind, params in settings.items():
        index, build_s, size, grown = build(kind)
        set_search_parameters(index, kind)
        for param, value in params:
            if kind == "hnsw":
                index.hnsw.efSearch = value
            else:
                index.nprobe = min(value, index.nlist)
            found, qps = timed_search(index)
            default = value == (EF_SEARCH if kind == "hnsw" else NPROBE)
            extra = f"M 32, efConstruction 80, {param} {value}"
            if kind == "ivfpq":
                pq = index.pq
                extra = f"nlist {index.nlist}, m {pq.M} x {pq.nbits} bits, {param} {value}"
            rows.append(
                dict(
                    gallery=name,
                    method=f"{kind}" + (" (--kind default settings)" if default else ""),
                    params=extra,
                    build_s=build_s,
                    index_mib=size,
                    rss_mib=grown,
                    qps=qps,
                    speedup=qps / numpy_qps,
                    recall=recall(found, truth),
                    queries=len(queries),
                )
            )
        del index
    return rows


def run_gallery(run_dir: Path) -> tuple[np.ndarray, np.ndarray, str]:
    """A trained run's train split (gallery) and test split (queries), embedded."""
    from tripletlab.inference import open_model
    from tripletlab.reuse.run_config import load_config, load_data

    run_cfg = load_config(run_dir)
    embedder = open_model(run_cfg.folder, run_cfg.cfg)
    data = load_data(run_cfg, embedder.input_shape)
    gallery = embedder.embed(data.x_train)
    queries = embedder.embed(data.x_test)
    return gallery, queries, f"{data.name} train split ({len(gallery)}), test queries"


def table(rows: list[dict]) -> str:
    header = (
        "| gallery | method | parameters | build s | index MiB | RSS growth MiB | queries/s "
        "| x exact numpy | recall@k | queries timed |"
    )
    lines = [header, "|" + "---|" * 10]
    for r in rows:
        rss = "-" if r["rss_mib"] != r["rss_mib"] else f"{r['rss_mib']:.0f}"
        lines.append(
            f"| {r['gallery']} | {r['method']} | {r['params']} | {r['build_s']:.1f} | "
            f"{r['index_mib']:.0f} | {rss} | {r['qps']:,.0f} | {r['speedup']:.1f} | "
            f"{r['recall']:.4f} | {r['queries']} |"
        )
    return "\n".join(lines)


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            cwd=Path(__file__).resolve().parents[2],  # the checkout, wherever the bench runs
        )
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    import faiss

    args = parse_args(argv)
    rows = []
    gallery = unit_vectors(args.count, args.dim, seed=1)
    queries = unit_vectors(args.queries, args.dim, seed=2)
    name = f"random unit vectors {args.count:,} x {args.dim}"
    rows += measure(name, gallery, queries, args.k, args.exact_queries)
    print(table(rows), flush=True)
    del gallery, queries
    if args.run is not None:
        gallery, queries, name = run_gallery(args.run)
        rows += measure(name, gallery, queries, args.k, len(queries))
    text = "\n".join(
        [
            "# Nearest-neighbour search: tripletlab-index (FAISS) beside exact search",
            "",
            f"- machine: {args.machine}, {faiss.omp_get_max_threads()} threads; the CPU is "
            "shared with other sessions, so absolute numbers vary from run to run: every row "
            "was measured in the same process, one after the other",
            f"- precision: FAISS float32; numpy's exact search float64; k = {args.k}",
            f"- date: {datetime.date.today().isoformat()}, commit {_commit()}, faiss "
            f"{faiss.__version__}, numpy {np.__version__}, Python {platform.python_version()}",
            "- command: `python -m tripletlab.bench index "
            + " ".join(argv if argv is not None else [])
            + "`",
            "- recall@k: the share of each query's k exact neighbours (FAISS IndexFlatL2) the "
            "method finds; for the FAISS exact row, its agreement with numpy's float64 search",
            "- x exact numpy: queries/s over numpy's exact search (timed on its own query "
            "subset); index MiB: the serialised index; RSS growth: the process' memory growth "
            "while building",
            "",
            table(rows),
            "",
        ]
    )
    if args.md:
        args.md.parent.mkdir(parents=True, exist_ok=True)
        args.md.write_text(text)
        print(f"wrote {args.md}")
    return 0
