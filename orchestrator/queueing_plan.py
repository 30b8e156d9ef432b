"""Queueing-aware planning: accept a plan only if the simulator says it meets the SLA under the arrivals.

The ILP (planner/ilp.py) sizes pools on service times: n_o ≥ λ / (ρ · μ_o). That ignores queueing, so a
plan can meet the SLA on its predicted latencies and miss it once runs arrive in bursts. The loop
(notation of planner/ilp.py and simulator/core.py)::

    S, q         the SLA (ms) and its percentile (%): the spec's, or --sla-ms / --percentile
    A            the arrival process (poisson, bursty:CV, a trace), λ its rate, seed s fixed
    ρ_1          the requested utilisation cap (PlanOptions.max_utilisation)
    B_k          the SLA budget given to the ILP; B_1 = S
    iteration k  P_k = ILP(λ, B_k, ρ_k)                                 (planned: service times only)
                 R_k = simulate(P_k, A, λ, s, runs = N)                 (simulated: queueing, sizes)
                 a_k = R_k's fraction of runs with e2e ≤ S
                 accept P_k  if a_k ≥ q / 100
                 else ρ_{k+1} = β · min(ρ_k, max_o u_o(P_k))             (β = 0.85)
                 u_o(P_k) = λ / (n_o μ_o), the planned utilisation of pool o: ρ_{k+1} is below the busiest
                 pool's, so the next plan adds capacity there (a cap above every u_o would re-solve to P_k)
                 and B_{k+1} = B_k · S / p̂_k  if p̂_k > S, p̂_k the simulated e2e percentile (p50, p95 or
                 p99: the first at or above q) — a miss from request sizes or batching, not queueing, needs
                 faster configurations, not more replicas; if the ILP has no plan at B_{k+1}, it re-solves at S
    stop         at the first accepted plan, when the ILP finds no plan at ρ_{k+1}, when ρ_{k+1} < ρ_min,
                 or after K iterations; then the plan of the best a_k is returned marked infeasible,
                 its reason naming that attainment

The cap is global (the ILP has one ρ for every pool). Lowering it only adds capacity, so the ILP's cost
can only rise with k (up to its MIP gap). Iteration 1 with a_1 ≥ q/100 returns the service-time plan
unchanged but for its ``simulation`` field. N runs at rate λ take N/λ simulated seconds. Each iteration
is an ILP solve plus a simulation of N runs (0.3-4 s for the examples' LLM graphs on a 2-core VM,
bench/queueing_plan_speed.py), so `hetagent plan` runs the loop only when asked (--arrivals/--percentile).
The daemon runs the same loop for POST /v1/graphs/{id}/plans with arrivals/percentile, and ``simulate_plan``
(one simulation of a finished plan, no re-planning) for GET /v1/plans/{id}/simulation of a plan made without.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from compiler.spec import AgentGraph
from costmodels.catalog import Catalog, ClusterInventory
from planner.place import PlanOptions
from planner.plan import Plan, SimulatedDistribution, SimulatedIteration, SimulatedPool, SimulationCheck

if TYPE_CHECKING:
    from simulator.core import SimResult

SHRINK = 0.85  # β: the cap's factor per failed iteration
MIN_UTILISATION = 0.05  # ρ_min
MAX_ITERATIONS = 8  # K
DEFAULT_RUNS = 2000  # N
DEFAULT_SEED = 7  # s


def plan_with_queueing(
    graph: AgentGraph,
    cluster: ClusterInventory,
    opts: PlanOptions,
    catalog: Catalog,
    *,
    arrivals: str = "poisson",
    percentile: float | None = None,
    seed: int = DEFAULT_SEED,
    runs: int = DEFAULT_RUNS,
    max_iterations: int = MAX_ITERATIONS,
    shrink: float = SHRINK,
) -> Plan:
    """Plan, simulate, lower the utilisation cap until the simulated percentile meets the SLA (see module doc).

    Bad arrivals and plans the simulator refuses raise ``PlanningError`` (the CLI's user errors)."""
    from compiler.ir import compile_graph
    from planner.ilp import PlanningError
    from planner.pipeline import apply_model_overrides, plan_spec
    from simulator.core import SimOptions, SimulationError, runtime_options, simulate

    q = graph.spec.sla.percentile if percentile is None else percentile
    if not 0 < q < 100:
        raise PlanningError(f"percentile must be in (0, 100), got {q}")
    if not 0 < shrink < 1:
        raise PlanningError(f"shrink must be in (0, 1), got {shrink}")
    _, granular = compile_graph(apply_model_overrides(graph, cluster, catalog), catalog)
    times = _arrival_times(arrivals, opts.rate_per_s, runs, seed)  # the same every iteration: the plans differ
    sim_opts = SimOptions(seed=seed, sla_percentile=q, **runtime_options(cluster))

    history: list[SimulatedIteration] = []
    best: tuple[Plan, SimulationCheck] | None = None
    rho = opts.max_utilisation
    sla: float | None = None  # S, the spec's unless given: known from the first plan
    budget = opts.sla_ms  # B_k
    for k in range(1, max_iterations + 1):
        plan = plan_spec(graph, cluster, replace(opts, max_utilisation=rho, sla_ms=budget), catalog)
        if not plan.feasible and sla is not None and budget != sla:
            budget = sla  # the tightened budget is out of reach: add capacity only
            plan = plan_spec(graph, cluster, replace(opts, max_utilisation=rho, sla_ms=budget), catalog)
        if not plan.feasible:
            history.append(
                SimulatedIteration(iteration=k, max_utilisation=rho, planned_sla_ms=plan.sla_ms, feasible=False)
            )
            if best is None:  # the service-time ILP itself has no plan: nothing to simulate
                return plan
            break
        if sla is None:
            sla = budget = plan.sla_ms
        assert budget is not None
        plan.sla_ms = sla  # the plan answers to S; the ILP's budget B_k is in its simulation record
        try:
            r = simulate(plan, granular, catalog, times, sim_opts)
        except SimulationError as exc:  # e.g. a plan that slices requests by size
            raise PlanningError(f"queueing-aware planning cannot simulate this plan: {exc}") from None
        history.append(
            SimulatedIteration(
                iteration=k,
                max_utilisation=rho,
                planned_sla_ms=budget,
                feasible=True,
                tco_usd_per_hour=plan.tco_usd_per_hour,
                simulated_attainment=r.attainment,
                simulated_p99_ms=r.p99_ms,
            )
        )
        check = _check(r, arrivals, q, seed, iteration=k, max_utilisation=rho, planned_sla_ms=budget)
        if best is None or r.attainment > best[1].simulated_attainment:
            best = (plan, check)
        if r.sla_met:
            break
        # the simulated percentile's excess over S comes off the budget (sizes, batching: faster tiers)
        p_hat = r.p50_ms if q <= 50 else r.p95_ms if q <= 95 else r.p99_ms
        if p_hat > sla:
            budget *= sla / p_hat
        # below the busiest pool's planned utilisation, so that at least that pool grows
        rho = shrink * min(rho, max((o.utilisation for o in plan.ops), default=rho))
        if rho < MIN_UTILISATION:
            break
    assert best is not None  # the loop ran at least once and returned if its first plan was infeasible
    plan, check = best
    plan.simulation = check.model_copy(update={"iterations": history})
    if not check.sla_met:
        plan.feasible = False
        plan.reason = (
            f"queueing-aware planning: no plan met the {plan.sla_ms:g} ms SLA at p{q:g} under {arrivals} arrivals "
            f"at {opts.rate_per_s:g} runs/s in {len(history)} iterations (utilisation cap {opts.max_utilisation:g} "
            f"down to {history[-1].max_utilisation:.3g}); best simulated attainment {check.simulated_attainment:.1%} "
            f"(iteration {check.iteration}, cap {check.max_utilisation:.3g}, simulated p99 "
            f"{check.simulated_p99_ms:.0f} ms)"
        )
    return plan


def simulate_plan(
    plan: Plan,
    graph: AgentGraph,
    cluster: ClusterInventory,
    catalog: Catalog,
    *,
    arrivals: str = "poisson",
    percentile: float | None = None,
    seed: int = DEFAULT_SEED,
    runs: int = DEFAULT_RUNS,
) -> SimulationCheck:
    """Simulate a finished plan once at its rate, without re-planning: the check the loop's iteration 1 makes.

    What the daemon computes for a plan made without arrivals. Raises ``PlanningError`` like the loop."""
    from compiler.ir import compile_graph
    from planner.ilp import PlanningError
    from planner.pipeline import apply_model_overrides
    from simulator.core import SimOptions, SimulationError, runtime_options, simulate

    q = graph.spec.sla.percentile if percentile is None else percentile
    if not 0 < q < 100:
        raise PlanningError(f"percentile must be in (0, 100), got {q}")
    _, granular = compile_graph(apply_model_overrides(graph, cluster, catalog), catalog)
    times = _arrival_times(arrivals, plan.rate_per_s, runs, seed)
    try:
        r = simulate(
            plan, granular, catalog, times, SimOptions(seed=seed, sla_percentile=q, **runtime_options(cluster))
        )
    except SimulationError as exc:
        raise PlanningError(f"cannot simulate this plan: {exc}") from None
    return _check(r, arrivals, q, seed, iteration=1, max_utilisation=plan.max_utilisation, planned_sla_ms=plan.sla_ms)


def _arrival_times(arrivals: str, rate_per_s: float, runs: int, seed: int) -> list[float]:
    """About ``runs`` arrivals: N runs at rate λ arrive in N/λ seconds."""
    from planner.ilp import PlanningError
    from simulator.arrivals import ArrivalError, arrival_times

    if runs < 1:
        raise PlanningError(f"runs must be >= 1, got {runs}")
    try:
        return arrival_times(arrivals, rate_per_s, runs / rate_per_s, seed)
    except ArrivalError as exc:
        raise PlanningError(str(exc)) from None


def _check(
    r: SimResult, arrivals: str, q: float, seed: int, *, iteration: int, max_utilisation: float, planned_sla_ms: float
) -> SimulationCheck:
    """The plan's record of a simulation result (planner.plan cannot import the simulator's types)."""
    pools = {
        name: SimulatedPool(
            device=o.device,
            replicas=o.replicas,
            utilisation=o.utilisation,
            mean_queue=o.mean_queue,
            max_queue=o.max_queue,
            mean_wait_ms=o.mean_wait_ms,
        )
        for name, o in r.ops.items()
    }
    return SimulationCheck(
        arrivals=arrivals,
        percentile=q,
        seed=seed,
        runs=r.runs,
        simulated_p50_ms=r.p50_ms,
        simulated_p95_ms=r.p95_ms,
        simulated_p99_ms=r.p99_ms,
        simulated_attainment=r.attainment,
        sla_met=r.sla_met,
        distribution=SimulatedDistribution(
            completed=r.completed,
            mean_ms=r.mean_ms,
            p99_9_ms=r.p99_9_ms,
            ttft_p50_ms=r.ttft_p50_ms,
            ttft_p95_ms=r.ttft_p95_ms,
            ttft_p99_ms=r.ttft_p99_ms,
            ttft_p99_9_ms=r.ttft_p99_9_ms,
            usd_per_1k_runs=r.usd_per_1k_runs,
            pools=pools,
            e2e_histogram=r.e2e_histogram,
        ),
        iteration=iteration,
        max_utilisation=max_utilisation,
        planned_sla_ms=planned_sla_ms,
    )
