"""The Starlette app: the read API, the simple API for installers, rewritten wheels."""
