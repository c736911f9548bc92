"""Gate G2's figure: how long an outage the provider's quota covers at this domain's volume.

During an outage every message for the domain goes through the provider, and its quota
(``backupmx.providers.quota``) caps them: over it, the provider defers or bounces the
domain's mail (G2's ledger entry says which). From the primary's own log (received
messages and bytes per day, ``backupmx.mailhost.maillog``) and what the quota leaves
once this tool's share is set aside, the gate report says how many hours of an outage
fit, at the last 30 days' and the last 7 days' volume, and warns below
``provider.budget.min_outage_hours`` (docs/budget.md). Informational: a warning, never a stop.
"""

from __future__ import annotations

from backupmx.core.budget import Budget, count, percent, size
from backupmx.core.report import PASS, WARN, Check
from backupmx.core.settings import Settings
from backupmx.mailhost.maillog import DAYS, MailVolume, Window
from backupmx.providers.quota import over_quota, quota

TITLE = "outage covered by the quota"
SHORT_WINDOW = 7


def hours_covered(budget: Budget, window: Window) -> float | None:
    """Hours of an outage at ``window``'s daily volume before the quota left for it is used up;
    None when the rolling window frees faster than the volume fills it (any outage fits)."""
    limits = []
    if window.messages_per_day > 0:
        limits.append(budget.outage_messages / window.messages_per_day * 24)
    if window.bytes_per_day > 0:
        limits.append(budget.outage_bytes / window.bytes_per_day * 24)
    if not limits or min(limits) >= budget.days * 24:
        return None
    return min(limits)


def coverage_check(settings: Settings, host_name: str, volume: MailVolume) -> Check | None:
    """The G2 row for one mail host; None when the provider has no quota."""
    budget = quota(settings)
    if budget is None:
        return None
    fix_log = ("set mailhost.mail_log to the Postfix log on the mail host (in the container for docker-mailserver), "
               "or Postfix's maillog_file")
    if volume.state != "present":
        why = {"missing": f"no mail log at {volume.path}", "unreadable": f"cannot read the mail log {volume.path}"}
        return Check("G2", TITLE, WARN, f"{host_name}: {why.get(volume.state, 'the mail log summary failed there')}: "
                     "how long an outage the quota covers is unknown", fix_log)
    long, short = volume.window(DAYS), volume.window(SHORT_WINDOW)
    if not long.covered:
        return Check("G2", TITLE, WARN, f"{host_name}: {volume.path} covers no complete day yet: how long an outage "
                     "the quota covers is unknown", "review again tomorrow")
    if not long.messages:
        return Check("G2", TITLE, WARN, f"{host_name}: {volume.path} shows no mail received from another server in "
                     f"the last {long.covered} days: is it the right log?", fix_log)
    left = (f"{count(budget.outage_messages)} / {size(budget.outage_bytes)} of {settings.provider.name}'s "
            f"{budget.describe()} are left for an outage ({percent(budget.share)} kept for this tool's drills "
            f"and canaries)")
    scope = (f"; all {len(settings.domains)} domains' mail is counted against one domain's quota"
             if len(settings.domains) > 1 else "")
    figures = [(long, hours_covered(budget, long), f"your last {long.covered} days'")]
    if short.covered and short.covered < long.covered:
        figures.append((short, hours_covered(budget, short), f"the last {short.covered} days'"))
    said = []
    for window, hours, whose in figures:
        rate = f"{window.messages_per_day:.3g} messages, {size(window.bytes_per_day)} a day"
        said.append(f"any outage at {whose} volume ({rate})" if hours is None else
                    f"about {hours:.0f} h at {whose} volume ({rate})")
    evidence = f"{host_name}: {'; '.join(said)}; {left}{scope} ({volume.path})"
    known = [hours for _, hours, _ in figures if hours is not None]
    if known and min(known) < budget.min_outage_hours:
        return Check("G2", TITLE, WARN, evidence,
                     f"an outage longer than {min(known):.0f} h goes over the quota, under the "
                     f"{budget.min_outage_hours:.0f} h wanted (provider.budget.min_outage_hours): "
                     f"{over_quota(settings)}; a paid plan or a self-hosted relay (docs/provider-selfhosted.md) "
                     "lifts it (docs/budget.md)")
    return Check("G2", TITLE, PASS, evidence)
