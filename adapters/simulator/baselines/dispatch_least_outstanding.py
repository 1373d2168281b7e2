def dispatch(request, replicas, now):
    """Least outstanding requests (waiting + running)."""
    return min(range(len(replicas)), key=lambda i: replicas[i].outstanding)
