def dispatch(request, replicas, now):
    """Round-robin: the replica that has been sent the fewest requests so far."""
    return min(range(len(replicas)), key=lambda i: replicas[i].assigned)
