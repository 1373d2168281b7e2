def reschedule(window, cluster, plan, cost_model):
    """Threshold: re-plan when load is badly imbalanced or the SLO is being missed."""
    return window.imbalance > 1.5 or window.slo_attainment < 0.9
