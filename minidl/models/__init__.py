"""minidl.models (in progress)."""
