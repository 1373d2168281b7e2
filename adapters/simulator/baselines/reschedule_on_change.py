def reschedule(window, cluster, plan, cost_model):
    """On cluster change only: re-plan when GPUs join, leave or are about to leave."""
    return len(cluster.events) > 0
