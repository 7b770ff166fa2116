"""Does an IVF_FLAT index make Milvus Lite searches cheaper than FLAT? (docs/benchmarks.md)

A benchmark of the store itself, so it lives beside the only module allowed to import pymilvus.

28,800 random 128-d unit vectors (the size of the benchmark catalog), 400 noisy queries searched
5 at a time (what a live station sends), CPU of this process plus the Lite server child per query
vector, and recall@10 against exact search.  Run: ``python -m tunetrace.store.lite_index_check``.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from pymilvus import DataType, MilvusClient

from tunetrace.evaluation.live import helper_cpu_s

N_VECTORS, DIMENSION, N_QUERIES, PER_SEARCH = 28_800, 128, 400, 5


def unit(rows: np.ndarray) -> np.ndarray:
    normalised: np.ndarray = (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)
    return normalised


def main() -> None:
    rng = np.random.default_rng(0)
    data = unit(rng.standard_normal((N_VECTORS, DIMENSION)))
    picked = data[rng.integers(0, N_VECTORS, N_QUERIES)]
    queries = unit(picked + 0.3 * rng.standard_normal((N_QUERIES, DIMENSION)))
    truth = np.argsort(-(queries @ data.T), axis=1)[:, :10]
    client = MilvusClient(str(Path(tempfile.mkdtemp()) / "index-check.db"))
    cases: list[tuple[str, str, dict[str, int], list[int | None]]] = [
        ("flat", "FLAT", {}, [None]), ("ivf", "IVF_FLAT", {"nlist": 128}, [8, 16, 32]),
    ]
    for collection, index_type, build, probes in cases:
        schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("v", DataType.FLOAT_VECTOR, dim=DIMENSION)
        index = client.prepare_index_params()
        index.add_index("v", index_type=index_type, metric_type="IP", params=build)
        client.create_collection(collection, schema=schema, index_params=index)
        for start in range(0, N_VECTORS, 2000):
            rows = range(start, min(start + 2000, N_VECTORS))
            client.insert(collection, [{"id": i, "v": data[i].tolist()} for i in rows])
        for nprobe in probes:
            params = {"metric_type": "IP"} | ({"params": {"nprobe": nprobe}} if nprobe else {})
            cpu_start = time.process_time() + helper_cpu_s()
            found: list[list[dict[str, int]]] = []
            for i in range(0, N_QUERIES, PER_SEARCH):
                result: Any = client.search(collection, data=list(queries[i : i + PER_SEARCH]), limit=10,
                                       search_params=params)
                found += list(result)
            cpu_ms = (time.process_time() + helper_cpu_s() - cpu_start) / N_QUERIES * 1e3
            recall = np.mean([len({h["id"] for h in hits} & set(truth[q])) / 10
                              for q, hits in enumerate(found)])
            print(f"{index_type} nprobe={nprobe}: {cpu_ms:.2f} ms CPU per query vector, "
                  f"recall@10 {recall:.3f}")


if __name__ == "__main__":
    main()
