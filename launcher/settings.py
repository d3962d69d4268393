"""Launcher settings (VM_LAUNCHER_* variables): how long `./mesh up` waits for each component."""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict


class LauncherSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VM_LAUNCHER_", extra="ignore", frozen=True)

    # Seconds a component (Triton, a service, the gateway, Envoy) may take from its start until it reports
    # ready; longer fails the platform's start (after a crash: the restart is logged as failed).
    ready_timeout_seconds: float = 120.0
    # The same for the segmentation service, which at its first start reports ready only once it has trained
    # its built-in component classifier (about 2.5 min with the default VM_SEGMENTATION_BUILTIN_* on 2 cores).
    segmentation_ready_timeout_seconds: float = 1800.0
    # Seconds a component may take to stop after SIGTERM before it is killed; after a kill -9 of the launcher,
    # the time its children (which get SIGTERM then) have before the guardian kills what is left of them.
    stop_timeout_seconds: float = 15.0
