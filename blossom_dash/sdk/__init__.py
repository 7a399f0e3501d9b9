"""The cut to blossom-ai and the network: event loop thread, observing transport,
backend, one call with the deadline, retries and every error mapping; the speech wire."""
