"""Which profile (model + hardware) a fitted cost model belongs to."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from moeqos.core.profile import Profile


@dataclass(frozen=True)
class FitIdentity:
    """The model fingerprint and hardware of the profile a cost model was fitted on."""

    model_name: str
    fingerprint: str
    device: str
    device_name: str
    host: str
    measured_at: str = ""

    @classmethod
    def of(cls, profile: Profile) -> FitIdentity:
        hw = profile.hardware
        return cls(
            profile.model.name,
            profile.model.fingerprint,
            hw.device,
            hw.device_name,
            hw.host,
            profile.measured_at,
        )

    def matches(self, profile: Profile) -> bool:
        """True if `profile` is of the same model on the same hardware."""
        other = FitIdentity.of(profile)
        return (self.fingerprint, self.device, self.device_name, self.host) == (
            other.fingerprint,
            other.device,
            other.device_name,
            other.host,
        )

    def describe(self) -> str:
        return (
            f"{self.model_name} [{self.fingerprint[:12]}] on {self.device_name} ({self.device}, {self.host})"
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FitIdentity:
        return cls(**data)
