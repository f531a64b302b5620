"""Standby refresh (DESIGN section 7): generations, manifests, switch, rollback, timer."""
from .standby import (RefreshReport, StandbyOptions, activate, create, default_dir, options_of, refresh, rollback,
                      status)
from .timer import write_units

__all__ = ["RefreshReport", "StandbyOptions", "activate", "create", "default_dir", "options_of", "refresh",
           "rollback", "status", "write_units"]
