"""docker-mailserver's config dir as the seed runs it in Kubernetes: a ConfigMap, read-only in the pod
(issue 21). The sandbox mounts its config dir read-only (``DmsSwitches.read_only``); a deploy must
then not half-apply: it refuses at preparation with one line naming every file it would change, and
nothing changes in the container, in the config dir or in DNS.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from backupmx_sandbox.dmshost import DmsSwitches
from backupmx_sandbox.world import Sandbox
from support.dms import in_container, pristine
from support.providers import admin, cloudflare_admin, cloudflare_writes, output, pyinfra, report_row



def config_dir_state(world) -> dict[str, str]:
    config = Path(world["primary"]["config_dir"])
    return {str(path.relative_to(config)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(config.rglob("*")) if path.is_file()}


def container_state(world) -> dict[str, str]:
    return {"postconf -P": in_container(world, "postconf", "-P").stdout,
            "postconf -n": in_container(world, "postconf", "-n").stdout,
            "override.d": in_container(world, "ls", "-la", "/etc/rspamd/override.d").stdout}


@pytest.fixture(scope="module")
def read_only(dms):
    pristine(dms)
    switches = DmsSwitches(Sandbox(Path(dms["root"])))
    switches.read_only(True)
    admin(dms, "reset", {})
    cloudflare_admin(dms, "POST", "reset")
    yield dms
    switches.read_only(False)


def test_the_config_dir_is_read_only_in_the_container(read_only):
    attempt = in_container(read_only, "touch", "/tmp/docker-mailserver/probe")
    assert attempt.returncode != 0 and "Read-only file system" in attempt.stderr, attempt.stderr


def test_a_deploy_refuses_at_preparation_naming_every_file_and_changes_nothing(read_only):
    files, container = config_dir_state(read_only), container_state(read_only)
    cloudflare_admin(read_only, "DELETE", "requests")
    for dry in (True, False):
        result = pyinfra("deploys/backupmx.py", dry=dry)
        text = output(result)
        assert result.returncode != 0 and "Traceback" not in text, text
        row = report_row(result.stdout, "3")
        assert row.status == "FAIL", text
        assert "/tmp/docker-mailserver is read-only in container" in row.evidence, row.evidence
        for name in ("rspamd/override.d/settings.conf", "postscreen_access.cidr", "user-patches.sh"):
            assert name in row.evidence, row.evidence
        assert "nothing was changed" in row.evidence and "Starting operation" not in text
    print("\nrow 3: " + row.evidence)
    assert config_dir_state(read_only) == files
    assert container_state(read_only) == container
    assert cloudflare_writes(read_only) == []
