"""Gate G5, the live failover drill: its settings, messages, down window, mailbox and report."""
