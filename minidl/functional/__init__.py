"""minidl.functional (in progress)."""
