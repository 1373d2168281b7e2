def priority(request, now):
    """First come, first served."""
    return request.arrival
