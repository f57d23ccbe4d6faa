"""`zoo-bench`: inference cost (prefill / decode throughput, memory, cache bytes) per architecture."""
