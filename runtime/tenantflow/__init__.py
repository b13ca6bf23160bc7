"""tenantflow: durable workflows from tenant code, run in a WebAssembly sandbox."""

__version__ = "0.1.0"
