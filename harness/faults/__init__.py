"""Fault plans and the gRPC client interceptor that applies them to a harness worker's calls."""

from harness.faults.interceptor import FaultInterceptor
from harness.faults.plans import STEP_METHODS, Fault, FaultPlan, method_for

__all__ = ["STEP_METHODS", "Fault", "FaultInterceptor", "FaultPlan", "method_for"]
