def reschedule(window, cluster, plan, cost_model):
    """Never: the initial plan serves to the end (GPUs that join stay idle, lost ones are not replaced)."""
    return None
