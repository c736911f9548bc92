"""The tests' shared helpers, one module per concern (imported as ``support``: pyproject's pythonpath).

cli_batch       many short pyinfra CLI runs from one forking helper process (its imports paid once)
clock           a clock the test moves by hand (a time source with sleep)
dms             the docker-mailserver world: brought up beside the native one, its container and logs
http_servers    HTTP(S) servers on loopback: an MTA-STS policy host, a server with one fixed answer
invariants      the world-state checks of docs/reliability.md (zone, DNS answer, whitelist, provider, I1-I3, I5)
layers          the realistic relayed envelope sent to the sandbox primary one layer at a time
mailhost        the files stage 3 manages (or any files): snapshot, put back byte for byte, staged copies; reloads
mailpath        sending mail through the sandbox: fresh client addresses, reading the Maildir
plan_documents  the --dry plan documents: docs/plan.schema.json and a small checker of its keywords
postfix_reload  a native Postfix reloaded and serving with its new configuration
providers       the fakes' admin APIs (relay provider, Cloudflare), sandbox settings, pyinfra CLI runs, report rows
pyinfra_state   a pyinfra State made in the test (hosts mx1, mx2, relay1), current for one host
scoring         relay scoring (external_relay) in the sandbox: its inventory, files and the way back to the seed
scratch         the mail host stage without a mail host: scratch Postfix config, stand-in commands
seed            the seed design's values as plain data: settings without a world, the MX records
settle          the world settled between modules: no mail of an earlier test still on its way
summaries       tables a test shows at the end of the run (the fault matrix, the kill points)
"""
