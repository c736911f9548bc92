"""The run of deploys/backupmx.py: settings, the gate report's own rows, the summary."""
