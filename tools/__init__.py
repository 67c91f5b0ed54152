"""Lab code run from a checkout's root and never installed: ``python -m tools.<package>.<script>``."""
