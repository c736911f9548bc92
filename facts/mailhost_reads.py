"""Several facts of the mail host in one SSH round trip (``MailhostReads``)."""

from __future__ import annotations

import re

from pyinfra.api import FactBase

from facts.mailhost import (
    DockerMailserverPolicies,
    InterruptedTransactions,
    MailhostFiles,
    PostscreenListeners,
    RspamdExemption,
    combined_script,
    split_parts,
)
from facts.mailhost_proof import MailhostProof

# The facts MailhostReads can combine, by name (a fact argument must print plainly).
_COMBINABLE = {fact.__name__: fact for fact in (MailhostFiles, PostscreenListeners, RspamdExemption,
                                               DockerMailserverPolicies, InterruptedTransactions, MailhostProof)}


class MailhostReads(FactBase):
    """
    Several facts of the mail host in one SSH round trip, run concurrently: ``reads``
    is a tuple of ``(fact name, ((argument, value), ...))``; the result is the list
    of what each fact returns, in that order. Stage 3's plans read their state
    through it (``operations.mailhost_state``), with stage 4's proof beside it
    while preparing (``operations.mailhost_proof.assess_mailhost``).

    .. code:: python

        host.get_fact(MailhostReads, reads=(("PostscreenListeners", (("config_dir", "/etc/postfix"),)),))
    """

    def command(self, reads):
        return combined_script({f"r{index}{fact}": _COMBINABLE[fact].captures(**dict(arguments))
                          for index, (fact, arguments) in enumerate(reads)})

    @staticmethod
    def default():
        return []

    def process(self, output):
        parts: dict[str, type] = {}
        for line in output:
            match = re.match(r"^r(\d+)([A-Za-z]+)__", line.strip())
            if match and match.group(2) in _COMBINABLE:
                parts[f"r{match.group(1)}{match.group(2)}"] = _COMBINABLE[match.group(2)]
        found = split_parts(output, parts)
        return [found[part] for part in sorted(found, key=lambda part: int(re.match(r"r(\d+)", part).group(1)))]
