def priority(request, now):
    """Shortest prompt first (prefill cost is known on arrival; output length is not)."""
    return request.prompt_tokens
