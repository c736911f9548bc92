"""What the sandbox changes in docker-mailserver 15.1.0's release tree before building it.

Two kinds of change, kept apart so each stays small and reviewable:

- substantive ones, in ``dms/recipe.patch`` (``patch -p1`` on the unpacked tree): every
  download from outside the Debian mirror becomes Debian's package or is dropped;
- a mechanical rewrite of Dockerfile syntax that podman 4.3's builder (buildah 1.28)
  cannot parse, plus the base image swapped for the local one (``rewrite_dockerfile``).

``DIFFERENCES`` lists every resulting difference from upstream's image, so the
sandbox can say what its docker-mailserver is and is not.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path, PurePosixPath

RECIPE_DIR = Path(__file__).with_name("dms")
RECIPE_PATCH = RECIPE_DIR / "recipe.patch"
UPSTREAM_BASE = "docker.io/debian:12-slim"
# Inside target/: upstream's .dockerignore admits nothing else to the build context.
SCRIPTS_DIR = "target/.backupmx-recipe"

# (upstream, here, why) — one entry per way the built image or its build differs.
DIFFERENCES: list[tuple[str, str, str]] = [
    ("FROM docker.io/debian:12-slim (debuerreotype's minbase, whose dpkg skips docs, man pages and locales)",
     "a Debian 12 image made with debootstrap --variant=minbase from the machine's Debian mirror and "
     "imported with podman import; dpkg installs docs and locales (DMS deletes them late in its build); "
     "apt in the image keeps that mirror and the machine's Check-Valid-Until/Check-Date/proxy settings "
     "(/etc/apt/apt.conf.d/99backupmx-build-host)",
     "Docker Hub is unreachable"),
    ("built by BuildKit (docker buildx)",
     "built by podman 4.3 (buildah 1.28) with --format docker and --network host",
     "the only builder here; SHELL is honoured only in the docker format"),
    ("`RUN <<EOF` heredocs in the Dockerfile (11; 10 once the patch has dropped razor's)",
     "each heredoc is a script file in the build context, copied in, run with bash -e -o pipefail "
     "(the Dockerfile's SHELL), then removed; the image has two layers per heredoc instead of one",
     "buildah 1.28 cannot parse heredocs"),
    ("ClamAV signatures copied from docker.io/clamav/clamav-debian:latest (COPY --link --chown=200)",
     "an empty /var/lib/clamav owned by uid/gid 200; run with ENABLE_CLAMAV=0",
     "Docker Hub is unreachable; clamd does not start without signatures"),
    ("rspamd from rspamd.com's apt-stable repository (its current release)",
     "Debian 12's rspamd 3.4 (redis-server from Debian, as upstream)",
     "rspamd.com is unreachable; DMS's packages.sh calls 3.4 too old and rspamd's authors discourage "
     "it, yet DMS's rspamd config passes rspamadm configtest with it"),
    ("jaq v2.1.0 binary from GitHub in /usr/local/bin",
     "Debian 12's jq 1.6, with /usr/local/bin/jaq a symlink to it",
     "GitHub is unreachable; DMS calls jaq only in update-check.sh, with a filter jq also runs"),
    ("step-cli 0.28.2 from GitHub in /usr/local/bin",
     "no step",
     "GitHub is unreachable; no DMS script calls it"),
    ("swaks 20240103.0 from GitHub in /usr/local/bin",
     "Debian 12's swaks 20201014.0 (/usr/bin/swaks)",
     "GitHub is unreachable"),
    ("fail2ban 1.1.0 .deb from GitHub (GPG-verified)",
     "Debian 12's fail2ban 1.0.2 without Debian's jail.d/defaults-debian.conf (upstream's nftables "
     "network-ban fix still applied)",
     "GitHub and the key server are unreachable; Debian's file enables an sshd jail, which finds no log "
     "in DMS and stops fail2ban from starting"),
    ("fts-xapian 1.9 compiled from GitHub's tarball in a stage-compile build stage",
     "Debian 12's dovecot-fts-xapian 1.5.5 installed by packages.sh; no compile stage",
     "GitHub is unreachable"),
    ("KAM channel key fetched from mcgrail.com into /etc/spamassassin/kam/",
     "no key (the directory is empty)",
     "mcgrail.com is unreachable; only SpamAssassin's KAM rule updates use it"),
    ("postgrey whitelist_clients fetched from postgrey's GitHub master",
     "Debian's packaged /etc/postgrey/whitelist_clients",
     "GitHub is unreachable"),
    ("`razor-admin -create` and `-register` for amavis (retried 10 times)",
     "skipped: amavis has no Razor identity",
     "Razor's servers are unreachable and the build fails without them"),
]

_HEREDOC = re.compile(r"^RUN\s+<<(-?)(['\"]?)(\w+)\2\s*$", re.IGNORECASE)
_FROM = re.compile(rf"^(FROM\s+(?:--platform=\S+\s+)?){re.escape(UPSTREAM_BASE)}(?=\s|$)", re.IGNORECASE)
_UNBUILDABLE = re.compile(r"^\s*RUN\b.*<<|--link\b|--chmod=|^\s*FROM\s+(--\S+\s+)*docker\.io/|--from=docker\.io/",
                          re.IGNORECASE)


def recipe_files() -> list[Path]:
    """Every file whose content decides what the build produces: the recipe data and code."""
    return sorted(p for p in RECIPE_DIR.rglob("*") if p.is_file()) + [Path(__file__)]


def apply_recipe(tree: Path, base_ref: str) -> None:
    """Turn the unpacked upstream ``tree`` into a build context podman 4.3 builds here."""
    _apply_patch(tree)
    dockerfile = tree / "Dockerfile"
    try:
        text, scripts = rewrite_dockerfile(dockerfile.read_text(), base_ref)
    except ValueError as error:
        raise RuntimeError(f"the recipe cannot rewrite {dockerfile}: {error}") from error
    (tree / SCRIPTS_DIR).mkdir(parents=True)
    for name, body in scripts.items():
        (tree / SCRIPTS_DIR / name).write_text(body)
    dockerfile.write_text(text)


def _apply_patch(tree: Path) -> None:
    result = subprocess.run(
        ["patch", "-p1", "--forward", "--batch", "--fuzz=0", "--no-backup-if-mismatch", "-d", str(tree),
         "-i", str(RECIPE_PATCH)], capture_output=True, text=True)
    if result.returncode != 0:
        said = (result.stdout + result.stderr).strip().splitlines()
        raise RuntimeError(f"{RECIPE_PATCH.name} does not apply to {tree}: {said[-1] if said else result.returncode}")


def rewrite_dockerfile(text: str, base_ref: str) -> tuple[str, dict[str, str]]:
    """(the Dockerfile buildah 1.28 parses, {script name: heredoc body}).

    Heredoc RUNs become scripts under SCRIPTS_DIR, COPY/ADD lose ``--link`` and
    ``--chmod`` (a chmod RUN follows), and FROM UPSTREAM_BASE names ``base_ref``.
    Anything else this builder cannot take raises ValueError, rather than build an
    image that silently differs.
    """
    lines, out, scripts = text.splitlines(), [], {}
    i = 0
    while i < len(lines):
        instruction = lines[i].split(maxsplit=1)[0].upper() if lines[i].strip() else ""
        if instruction == "RUN" and "<<" in lines[i]:
            i = _heredoc(lines, i, out, scripts)
        elif instruction in ("COPY", "ADD"):
            i = _copy(lines, i, out)
        else:
            out.append(_FROM.sub(lambda m: m.group(1) + base_ref, lines[i]))
            i += 1
    leftover = [line for line in out if not line.lstrip().startswith("#") and _UNBUILDABLE.search(line)]
    if leftover:
        raise ValueError(f"Dockerfile still has what buildah 1.28 cannot build: {leftover[0].strip()!r}")
    return "\n".join(out) + "\n", scripts


def _heredoc(lines: list[str], i: int, out: list[str], scripts: dict[str, str]) -> int:
    match = _HEREDOC.match(lines[i].strip())
    if not match:
        raise ValueError(f"Dockerfile line {i + 1}: heredoc form not handled: {lines[i].strip()}")
    strip_tabs, delimiter = match.group(1) == "-", match.group(3)
    body = []
    for end in range(i + 1, len(lines)):
        line = lines[end].lstrip("\t") if strip_tabs else lines[end]
        if line == delimiter:
            break
        body.append(line)
    else:
        raise ValueError(f"Dockerfile line {i + 1}: heredoc never ends with {delimiter}")
    name = f"heredoc-{len(scripts) + 1:02d}.sh"
    scripts[name] = "\n".join(body) + "\n"
    out.append(f"COPY {SCRIPTS_DIR}/{name} /tmp/{name}")
    out.append(f"RUN bash -e -o pipefail /tmp/{name} && rm /tmp/{name}")
    return end + 1


def _copy(lines: list[str], i: int, out: list[str]) -> int:
    end = i
    while lines[end].rstrip().endswith("\\") and end + 1 < len(lines):
        end += 1
    words = " ".join(line.rstrip().rstrip("\\") for line in lines[i:end + 1]).split()
    flags = [w for w in words[1:] if w.startswith("--")]
    if not any(f == "--link" or f.startswith("--chmod=") for f in flags):
        out.extend(lines[i:end + 1])
        return end + 1
    if words[len(flags) + 1].startswith("["):
        raise ValueError(f"Dockerfile line {i + 1}: JSON-form {words[0]} with --link/--chmod not handled")
    chmod = next((f.split("=", 1)[1] for f in flags if f.startswith("--chmod=")), None)
    kept = [f for f in flags if f != "--link" and not f.startswith("--chmod=")]
    *sources, dest = words[len(flags) + 1:]
    out.append(" ".join([words[0], *kept, *sources, dest]))
    if chmod:
        out.append(f"RUN chmod {chmod} " + " ".join(_copied_paths(sources, dest)))
    return end + 1


def _copied_paths(sources: list[str], dest: str) -> list[str]:
    """Where COPY put each source's file: into ``dest`` as a directory when it is one."""
    if len(sources) == 1 and not dest.endswith("/"):
        return [dest]
    return [str(PurePosixPath(dest) / PurePosixPath(src).name) for src in sources]
