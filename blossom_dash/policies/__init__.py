"""Request policies: the response cache, replay recordings, rate limits, spending budgets, the circuit breaker."""
