"""The floor: a bare pyinfra deploy that uploads the files deploys/backupmx.py manages, nothing else.

``python -m bench`` writes the manifest ($BACKUPMX_BENCH_FLOOR, JSON: host name ->
[[local copy, remote path], ...]) from the files already in place, so every
``files.put`` here is a no-op: what is left is pyinfra's own cost of connecting to
the same hosts and checking the same files.
"""

import json
import os

from pyinfra import host
from pyinfra.operations import files

with open(os.environ["BACKUPMX_BENCH_FLOOR"]) as handle:
    manifest = json.load(handle)

for src, dest in manifest.get(host.name, []):
    files.put(name=f"floor: {dest}", src=src, dest=dest)
