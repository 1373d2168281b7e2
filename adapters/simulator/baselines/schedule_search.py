BUDGET = 12


def schedule(cluster, workload, cost_model):
    """Heuristic search with a fixed budget, in the spirit of heterogeneous-GPU planners:
    per GPU type choose a tensor-parallel degree by coordinate descent, asking the cost
    model to rate each candidate plan (each estimate costs time) and keeping the one
    with the lowest estimated TTFT (ties: highest throughput)."""
    types = sorted(cluster.types().items())
    degrees = {}
    for gpu_type, ids in types:
        options = [tp for tp in (1, 2, 4, 8) if tp <= len(ids) and cost_model.fits(gpu_type, tp, 1)]
        if options:
            degrees[gpu_type] = options

    def build(choice):
        plan = []
        for gpu_type, ids in types:
            tp = choice.get(gpu_type)
            if tp:
                for start in range(0, len(ids) - tp + 1, tp):
                    plan.append((ids[start:start + tp], tp, 1))
        return plan

    def score(choice):
        estimate = cost_model.estimate(build(choice), workload)
        return (estimate["ttft_s"], -estimate["throughput_rps"])

    best = {t: options[0] for t, options in degrees.items()}
    best_score = score(best)
    spent = 1
    for gpu_type, options in sorted(degrees.items()):
        for tp in options[1:]:
            if spent >= BUDGET:
                return build(best)
            candidate = dict(best)
            candidate[gpu_type] = tp
            candidate_score = score(candidate)
            spent += 1
            if candidate_score < best_score:
                best, best_score = candidate, candidate_score
    return build(best)
