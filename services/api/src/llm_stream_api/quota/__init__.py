"""What a request may ask for and how many may wait: ``input_limits`` (one request's size),
``admission`` (bounded queue and streams), ``key_limits`` (per API key), ``rates`` (drain rates)."""
