"""Cost measurement: parameters, FLOPs, throughput, latency and memory."""
