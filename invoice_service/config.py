"""Invoice-service settings on top of the shared Settings: usage grace window and clock skew."""

from __future__ import annotations

from dataclasses import dataclass

from service_runtime.settings import Settings

DEFAULT_USAGE_GRACE_S = 3 * 24 * 3600


@dataclass(frozen=True)
class InvoiceConfig:
    clock_skew_s: int
    usage_grace_s: int  # a period keeps accepting late events until period_end + usage_grace_s

    @staticmethod
    def from_settings(settings: Settings, usage_grace_s: int | None = None) -> InvoiceConfig:
        if usage_grace_s is None:
            usage_grace_s = settings.usage_grace_s  # CREDITS_USAGE_GRACE_S
        return InvoiceConfig(clock_skew_s=settings.clock_skew_s, usage_grace_s=usage_grace_s)
