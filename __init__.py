"""The checkout's root installs as ``preflexor_local.app`` (see pyproject.toml); its one module is cli.py."""
