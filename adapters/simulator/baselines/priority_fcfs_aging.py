def priority(request, now):
    """FCFS across two classes with aging: long prompts (batch-like) yield to short ones
    (interactive) that arrived up to 20 s later, so neither class starves."""
    return request.arrival + (20.0 if request.prompt_tokens > 1024 else 0.0)
