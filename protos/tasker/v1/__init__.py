"""Generated stubs of tasker.v1. Regenerate with `make proto`."""
