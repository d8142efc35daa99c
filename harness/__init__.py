"""The proving harness: fault plans and their gRPC interceptor, the harness worker, the chaos campaign
with its TCP fault proxies, the benchmarks with their baselines, and the OS-process stack they run on.

Product packages never import this one (tests/test_layering.py); it imports theirs.
"""
