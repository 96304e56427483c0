"""What the ChirpStack API client returns: applications, devices, profiles and keys as frozen dataclasses."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class ApplicationRecord:
    """A ChirpStack application."""

    id: str
    tenant_id: str
    name: str
    description: str = ""


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    """A ChirpStack device.

    `variables` and `is_disabled` are None when the record comes from `list_devices`:
    ChirpStack's List response does not carry them, only Get does.
    """

    dev_eui: str
    name: str
    application_id: str
    profile_id: str
    description: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    variables: dict[str, str] | None = None
    is_disabled: bool | None = None
    join_eui: str = ""  # OTAA JoinEUI (AppEUI); only from `get_device`


@dataclass(frozen=True, slots=True)
class ProfileRecord:
    """A ChirpStack device profile with its payload codec."""

    id: str
    name: str
    codec_runtime: str  # "NONE", "CAYENNE_LPP" or "JS"
    codec_script: str = ""
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DeviceKeys:
    """A device's OTAA root keys, hex. Never logged or printed unless asked for (`export --with-keys`).

    For LoRaWAN 1.0.x devices the AppKey is ChirpStack's `nwk_key` (its API names it so);
    `app_key` is only set for LoRaWAN 1.1 devices.
    """

    dev_eui: str
    nwk_key: str
    app_key: str = ""

    def __repr__(self) -> str:
        return f"DeviceKeys({self.dev_eui!r}, <keys hidden>)"


@dataclass(frozen=True, slots=True)
class SyncResult:
    """What one `sync` pulled from ChirpStack."""

    tenants: int
    applications: int
    devices: int
    profiles: int
    seconds: float
