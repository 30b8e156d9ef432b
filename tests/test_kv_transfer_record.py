"""A split LLM's KV hand-off record (workers.executor): its predicted time is the cost model's NIC time for the
bytes actually moved, on the plan's link; the plan's own figures and the measured time pass through labelled.
No engine and no Ray: the record is built from a result the decode side would return (tests/test_pd_split.py
covers the real hand-off with vLLM)."""

from __future__ import annotations

import pytest

from costmodels.catalog import load_catalog
from tests.support.plans import draft_writer_plans
from workers.executor import GraphRunner

CAT = load_catalog()


def test_the_kv_record_predicts_the_moved_bytes_on_the_planned_link():
    graph, _, split = draft_writer_plans(CAT)
    runner = GraphRunner(graph, split)
    unit = runner.units["draft"]
    runner.pools = {p: runner.layout.pools[p] for p in unit.pools}  # what start() would start (no Ray here)
    edge = next(e for e in split.edges if (e.src, e.dst) == ("draft.prefill", "draft.decode"))
    assert edge.src_device != edge.dst_device and edge.bytes > 0

    nbytes = 3 * 2**20  # not the planned bytes: the prediction follows what moved
    env = {
        "detail": {
            "kv_transfer": {"kv_bytes": nbytes, "kv_tokens": 256, "transfer_measured_ms": 7.5},
            "prompt_tokens_prefilled": 260,
        }
    }
    record = runner._kv_transfer("draft", env, [(unit.pools[0], 0), (unit.pools[1], 0)])

    # by hand from the catalog: each end's NIC is a fixed hand-off plus bytes over its effective bandwidth,
    # (1 GB/s moves 1e6 bytes a millisecond), and the slower end limits the transfer
    ends = [CAT.device(edge.src_device), CAT.device(edge.dst_device)]
    by_hand_ms = max(d.efficiency.transfer_fixed_ms + nbytes / (d.network_gb_s * d.efficiency.link * 1e6) for d in ends)
    assert by_hand_ms > 20  # 3 MiB over ~0.1 GB/s: the bytes, not only the fixed cost, count here
    assert record["predicted_ms"] == pytest.approx(by_hand_ms, rel=1e-9)
    assert record == {
        "node": "draft",
        "src_device": edge.src_device,
        "dst_device": edge.dst_device,
        "bytes": nbytes,
        "tokens": 256,
        "prompt_tokens": 260,
        "measured_ms": 7.5,
        "predicted_ms": record["predicted_ms"],
        "planned_bytes": edge.bytes,
        "planned_ms": edge.transfer_ms,
    }
