"""minidl.optim (in progress)."""
