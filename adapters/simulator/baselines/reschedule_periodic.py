STATE = {"calls": 0}
EVERY = 4


def reschedule(window, cluster, plan, cost_model):
    """Periodic: re-plan on the observed workload every EVERY calls (calls come every
    reschedule interval and on cluster events)."""
    STATE["calls"] = STATE["calls"] + 1
    return STATE["calls"] % EVERY == 0
