def dispatch(request, replicas, now):
    """Capacity-weighted join-shortest-queue: outstanding work over the replica's speed."""
    return min(range(len(replicas)), key=lambda i: (replicas[i].outstanding + 1.0) / replicas[i].speed)
