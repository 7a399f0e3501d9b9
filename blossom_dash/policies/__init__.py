"""Request policies: the response cache, replay recordings, rate limits, the circuit breaker."""
