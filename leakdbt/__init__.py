"""leakdbt: a dynamic binary translator that keeps secrets from leaking through side channels."""

__version__ = "0.1.0"
