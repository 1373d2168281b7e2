def schedule(cluster, workload, cost_model):
    """Uniform: every GPU serves; one replica per GPU, or per the smallest group of
    same-type GPUs (tensor parallel) that the model fits on."""
    plan = []
    for gpu_type, ids in sorted(cluster.types().items()):
        tp = 1
        while tp <= 8 and not cost_model.fits(gpu_type, tp, 1):
            tp = tp * 2
        if tp > 8:
            continue
        for start in range(0, len(ids) - tp + 1, tp):
            plan.append((ids[start:start + tp], tp, 1))
    return plan
